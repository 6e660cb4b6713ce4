"""Cohen et al.'s CERTIFY / PREDICT on classifiers with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoattack.blackbox import BlackBox
from zoattack.defense.certify import (
    ABSTAIN,
    Smooth,
    blackbox_classifier,
    certified_accuracy,
    check_certify_args,
    lower_confidence_bound,
    max_radius,
)
from zoattack.jobs.certify import certify_images, read_rows
from zoattack.seeding import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 4, 4)


class Halfspace(nn.Module):
    """Class 1 iff ``<w, x> + b > 0``: the smoothed classifier's exact radius is the distance
    ``(<w, x> + b) / ||w||`` to the hyperplane (Cohen et al., Proposition 3 for linear f)."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.randn(16, generator=make_generator(7))
        self.w = w / w.norm()
        self.b = -0.5 * float(self.w.sum())  # the boundary passes through x = 0.5

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s, s], dim=1)

    def point_at(self, distance: float) -> torch.Tensor:
        return (0.5 + distance * self.w).reshape(SHAPE)


def _smooth(sigma=0.25, batch=2000):
    model = Halfspace().eval()
    bb = BlackBox(model, output="labels", bounds=None, input_shape=SHAPE)
    return model, bb, Smooth(blackbox_classifier(bb), 2, sigma, batch)


def test_certify_linear_classifier_gives_the_analytic_radius():
    model, bb, smooth = _smooth()
    for distance in (0.15, 0.3, -0.3):
        x = model.point_at(distance)
        pred, radius = smooth.certify(x, 100, 10_000, 0.001, generator=make_generator(1))
        assert pred == (1 if distance > 0 else 0)
        # The certificate is a lower bound (holds w.p. 1 - alpha) and with N = 10^4 it is tight
        # to about sigma * 3.09 * sqrt(p(1-p)/N) / phi(PhiInv(p)) ~ 0.015.
        assert radius <= abs(distance) + 0.005
        assert radius == pytest.approx(abs(distance), abs=0.03)
    assert bb.total_queries == 3 * 10_100 and bb.queries.tolist() == [3 * 10_100]


def test_abstains_on_the_decision_boundary_and_predict_agrees():
    model, bb, smooth = _smooth()
    x = model.point_at(0.0)
    assert smooth.certify(x, 100, 2_000, 0.001, generator=make_generator(2)) == (ABSTAIN, 0.0)
    assert smooth.predict(x, 2_000, 0.001, generator=make_generator(3)) == ABSTAIN
    assert smooth.predict(model.point_at(0.2), 2_000, 0.001, generator=make_generator(3)) == 1


def test_far_points_hit_the_largest_certifiable_radius():
    model, _, smooth = _smooth()
    pred, radius = smooth.certify(
        model.point_at(5.0), 10, 1_000, 0.001, generator=make_generator(4)
    )
    assert pred == 1 and radius == pytest.approx(max_radius(0.25, 1_000, 0.001))
    # sigma * PhiInv(alpha^(1/N)) = 0.80 for the paper's setting: why tables stop at 0.75.
    assert max_radius(0.25, 10_000, 0.001) == pytest.approx(0.25 * 3.1987, abs=2e-3)


def test_clopper_pearson_lower_bound():
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    # Against the normal approximation for a mid-range proportion.
    lo = lower_confidence_bound(5_000, 10_000, 0.001)
    assert lo == pytest.approx(0.5 - 3.09 * math.sqrt(0.25 / 10_000), abs=5e-4)


@pytest.mark.parametrize(
    "args, needle",
    [
        ((0.0, 100, 1000, 0.001), "--sigma must be > 0"),
        ((-0.25, 100, 1000, 0.001), "--sigma must be > 0"),
        ((0.25, 1000, 100, 0.001), "must not exceed --n"),
        ((0.25, 100, 1000, 0.0), "--alpha must lie in"),
        ((0.25, 100, 1000, 1.0), "--alpha must lie in"),
    ],
)
def test_bad_settings_raise_one_clear_error(args, needle):
    with pytest.raises(ValueError, match=needle):
        check_certify_args(*args)


def test_certify_images_rows_resume_and_ledger(tmp_path):
    model, bb, smooth = _smooth(batch=128)
    x = torch.stack([model.point_at(d) for d in (0.3, -0.2, 0.0, 0.1)])
    y = torch.tensor([1, 1, 0, 1])
    idx = [10, 11, 12, 13]
    full = certify_images(smooth, x, y, idx, tmp_path / "a.csv", n0=20, n=300, seed=5, blackbox=bb)
    assert [r["index"] for r in full] == idx
    assert sum(r["queries"] for r in full) == bb.total_queries == 4 * 320
    assert full[1]["correct"] == 0 and full[2]["abstain"] == 1 and full[2]["prediction"] == -1
    acc = certified_accuracy(full, (0.0, 0.1, 0.5))
    assert acc["0"] == sum(r["correct"] for r in full) / 4 and acc["0.5"] == 0.0
    # Interrupt after two images: keep the header and two rows, then resume.
    lines = (tmp_path / "a.csv").read_text().splitlines()
    (tmp_path / "b.csv").write_text("\n".join(lines[:3]) + "\n")
    _, bb2, smooth2 = _smooth(batch=128)
    resumed = certify_images(
        smooth2, x, y, idx, tmp_path / "b.csv", n0=20, n=300, seed=5, blackbox=bb2, resume=True
    )
    assert bb2.total_queries == 2 * 320  # nothing redone
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_rows(tmp_path / "b.csv")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in full]
    assert len(resumed) == 4
    with pytest.raises(ValueError, match="--resume"):
        certify_images(smooth2, x, y, idx, tmp_path / "b.csv", n0=20, n=300)


@pytest.mark.parametrize("group", [2, 5])
def test_grouped_certification_equals_one_at_a_time(tmp_path, group):
    """Images certified together share black-box calls but keep their own noise: the rows
    (timings aside) and every image's ledger equal one-at-a-time certification's."""
    model = Halfspace().eval()
    xs = torch.stack([model.point_at(d) for d in (0.3, -0.1, 0.02, 5.0, -0.4)])
    labels = torch.tensor([1, 0, 1, 1, 0])
    idx = [3, 10, 11, 12, 20]

    def run(g, name):
        bb = BlackBox(model, output="labels", bounds=None, input_shape=SHAPE)
        smooth = Smooth(blackbox_classifier(bb), 2, 0.25, batch=300)
        rows = certify_images(
            smooth, xs, labels, idx, tmp_path / name, n0=50, n=700, blackbox=bb, group=g
        )
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows], bb

    one, bb1 = run(1, "one.csv")
    many, bbk = run(group, "many.csv")
    assert many == one
    assert bbk.queries.tolist() == bb1.queries.tolist()
    assert all(r["queries"] == 750 for r in many)
    with pytest.raises(ValueError, match="--group must be >= 1"):
        run(0, "zero.csv")
