"""Hard-label attacks as jobs (`zoattack run --attack`): spec checks, labels-only wrapping,
the ledger through the job, re-checked adversarials, monotone distance curves, targeted
starts, --init-from files and resume == an uninterrupted run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from zoattack.blackbox import BlackBox, LabelsOnly
from zoattack.jobs.attack import AttackSpec, JobInterrupted, prepare, run_job
from zoattack.jobs.hardlabel import load_starts
from zoattack.jobs.run import run_attack_job
from zoattack.norms import distance

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "model": "small_cnn",
    "images": 4,
    "budget": 60,
    "chunk_size": 2,
    "device": "cpu",
    "labels_only": True,
}


def spec(**kw: object) -> AttackSpec:
    return AttackSpec(**{**SMALL, **kw})  # type: ignore[arg-type]


class Counting(nn.Module):
    """Counts the inputs the real model scores (the ground truth for the ledger)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.inputs, self.calls = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs += x.shape[0]
        self.calls += 1
        return self.inner(x)


class Failing(nn.Module):
    """Answers ``ok_calls`` calls, then raises ``error`` (a dead model, or Ctrl-C)."""

    def __init__(self, inner: nn.Module, ok_calls: int, error: BaseException) -> None:
        super().__init__()
        self.inner, self.ok_calls, self.error, self.calls = inner, ok_calls, error, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise self.error
        return self.inner(x)


@pytest.fixture(scope="module")
def victim() -> nn.Module:
    return prepare(AttackSpec(images=1, device="cpu", budget=2)).model


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"attack": "hsja", "lr": 0.1}, "--lr does not apply to --attack hsja"),
        ({"attack": "rays", "subspace": "tile:7"}, "--subspace does not apply"),
        ({"attack": "rays", "norm": "l2"}, "supports --norm linf"),
        ({"attack": "hsja", "target": "least-likely"}, "needs the model's scores"),
        ({"attack": "opt", "optimizer": "sign"}, "search rule"),
        ({"attack": "hsja", "loss": "ce"}, "--loss"),
        ({"attack": "nope"}, "unknown attack"),
        ({"attack": None}, "--labels-only hides the scores"),
        ({"attack": None, "labels_only": False, "init_from": "x.npy"}, "--init-from gives"),
    ],
)
def test_spec_refuses_options_that_would_be_ignored(kw, match):
    from zoattack.errors import ZOAttackError

    with pytest.raises((ValueError, ZOAttackError), match=match):
        spec(**kw).resolved()


def test_opt_takes_the_core_rule_estimator_and_subspace():
    s = spec(attack="opt", optimizer="lizo", subspace="tile:7", samples=5).resolved()
    assert (s.optimizer, s.subspace, s.attack) == ("lizo", "tile:7", "opt")
    from zoattack.jobs.attack import effective_settings, method_of, spec_label

    assert spec_label(s) == "opt:lizo+lizo"
    assert effective_settings(s)["attack_options"]["rule_kwargs"]["num_samples"] == 5
    assert "rule lizo" in method_of(s) and "tile:7" in method_of(s)


@pytest.mark.parametrize("norm, picked", [("l2", "sign_opt"), ("linf", "rays"), ("Linf", "rays")])
def test_auto_picks_the_benchmarked_attack_per_norm(norm, picked):
    s = spec(attack="auto", norm=norm).resolved()
    assert s.attack == picked
    from zoattack.jobs.attack import effective_settings

    assert effective_settings(s)["attack"] == picked  # run.json names what ran, not "auto"


def test_a_decision_attack_on_a_scores_model_needs_labels_only():
    with pytest.raises(ValueError, match="--labels-only"):
        prepare(spec(attack="hsja", labels_only=False))


def test_labels_only_wrapper_hides_scores(victim):
    wrapped = LabelsOnly(victim).eval()
    x = torch.rand(5, 1, 28, 28)
    out = wrapped(x)
    assert set(out.unique().tolist()) <= {0.0, 1.0} and (out.sum(1) == 1).all()
    assert torch.equal(out.argmax(1), victim(x).argmax(1))
    assert list(wrapped.parameters()) == []  # no route to the weights either
    with pytest.raises(Exception, match="labels only"):
        BlackBox(wrapped, output="logits")


def test_scores_never_reach_attack_code(victim, monkeypatch):
    """A model whose logits carry a secret (a large unique offset per call) is attacked with
    --labels-only; everything the black box hands back to attack code is an int64 label."""
    seen: list[torch.Tensor] = []

    class Leaky(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return victim(x) * 1000.0 + 0.123

    real_query = BlackBox.query

    def spy(self, x, owner=None):
        out = real_query(self, x, owner)
        seen.append(out)
        return out

    monkeypatch.setattr(BlackBox, "query", spy)
    job = prepare(spec(attack="hsja", images=2, budget=30), model=Leaky())
    assert isinstance(job.model, LabelsOnly)
    run_job(job)
    assert seen
    for out in seen:
        assert out.dtype == torch.int64 and out.dim() == 1


@pytest.mark.parametrize(("attack", "norm"), [("hsja", "l2"), ("rays", "linf"), ("opt", "l2")])
def test_ledger_rows_and_adversarials_through_the_job(victim, attack, norm):
    counter = Counting(victim)
    job = prepare(spec(attack=attack, norm=norm), model=counter)
    out = run_job(job)
    rows = sorted(out.rows, key=lambda r: r["index"])
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    # The ledger is every scored input, exactly (clean checks and search probes included).
    assert sum(r["queries"] for r in rows) == out.scored_inputs == counter.inputs
    eps = job.spec.eps
    for c in out.chunks:
        res = c.result
        x0 = job.images[c.start : c.start + len(res.label)]
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
        pred = victim(res.x_adv).argmax(1)
        for i in range(len(res.label)):
            row = rows[c.start + i]
            assert row["queries"] <= 60
            if row["stop_reason"] == "misclassified":
                assert row["queries"] == 1
                continue
            if bool(res.found[i]):  # re-checked with the model itself
                assert int(pred[i]) != int(res.label[i])
                assert int(pred[i]) == row["final_prediction"]
                d = float(distance(res.x_adv[i : i + 1], x0[i : i + 1], norm)[0])
                assert d == pytest.approx(row[norm], abs=1e-5)
                assert bool(row["success"]) == (d <= eps + 1e-9)
            else:
                assert row["stop_reason"] == "no_start" and not row["success"]
            dists = [dd for _, dd in res.curve[i]]
            qs = [q for q, _ in res.curve[i]]
            assert dists == sorted(dists, reverse=True)  # never increases
            assert qs == sorted(qs) and all(q <= row["queries"] for q in qs)
            if row["success"]:
                assert 0 < row["queries_to_eps"] <= row["queries"]
            else:
                assert row["queries_to_eps"] == -1


def test_targeted_random_starts_from_the_target_class(victim):
    job = prepare(spec(attack="hsja", target="random", budget=40))
    assert job.pool is not None
    out = run_job(job)
    for c in out.chunks:
        res = c.result
        pred = victim(res.x_adv).argmax(1)
        for i in range(len(res.label)):
            if bool(res.found[i]):
                assert int(pred[i]) == int(res.final_pred[i]) != int(res.label[i])
    # same targets and starts on a rerun: determinism per chunk
    again = run_job(prepare(spec(attack="hsja", target="random", budget=40)))
    assert again.rows == out.rows


def test_targeted_class_index_reaches_the_target(victim):
    out = run_job(prepare(spec(attack="rays", norm="linf", target="3", budget=40)))
    for c in out.chunks:
        res = c.result
        pred = victim(res.x_adv).argmax(1)
        for i in range(len(res.label)):
            if bool(res.found[i]):
                assert int(pred[i]) == 3


def test_init_from_files_are_validated(tmp_path):
    shape = (1, 28, 28)
    ok = np.full((3, *shape), 0.5, np.float32)
    np.save(tmp_path / "s.npy", ok)
    assert load_starts(tmp_path / "s.npy", shape, 3).shape == (3, *shape)
    torch.save(torch.full(shape, 0.25), tmp_path / "one.pt")
    one = load_starts(tmp_path / "one.pt", shape, 3)
    assert one.shape == (3, *shape) and float(one.max()) == 0.25
    from PIL import Image

    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "w.png")
    assert float(load_starts(tmp_path / "w.png", shape, 2).min()) == 1.0
    np.save(tmp_path / "bad.npy", np.full((2, 1, 8, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="expected 3x1x28x28"):
        load_starts(tmp_path / "bad.npy", shape, 3)
    np.save(tmp_path / "big.npy", np.full((3, *shape), 255.0, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_starts(tmp_path / "big.npy", shape, 3)
    np.save(tmp_path / "nan.npy", np.full((3, *shape), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_starts(tmp_path / "nan.npy", shape, 3)
    with pytest.raises(ValueError, match="no such file"):
        load_starts(tmp_path / "missing.npy", shape, 3)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"\.pt, \.npy or \.png"):
        load_starts(tmp_path / "x.txt", shape, 3)


def test_init_from_starts_are_used_and_checked(victim, tmp_path):
    """Starts given by file: images of another class make every attacked image start
    adversarial (the start check is one counted query)."""
    data = prepare(AttackSpec(images=200, device="cpu", budget=2))
    x, y = data.images, data.labels
    pred = victim(x).argmax(1)
    pick = [int(((pred == c) & (y == c)).nonzero()[0]) for c in range(10)]
    starts = torch.stack([x[pick[(int(y[i]) + 1) % 10]] for i in range(4)])
    torch.save(starts, tmp_path / "starts.pt")
    out = run_job(prepare(spec(attack="hsja", init_from=str(tmp_path / "starts.pt"))))
    attacked = [r for r in out.rows if r["stop_reason"] != "misclassified"]
    assert attacked and all(r["stop_reason"] != "no_start" for r in attacked)


def _csv(folder):
    with (folder / "per_image.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_resume_equals_an_uninterrupted_run(victim, tmp_path):
    s = spec(attack="hsja", images=6)
    full = run_attack_job(s, out=tmp_path / "full")
    assert full.summary["images"] == 6
    cut = Failing(victim, ok_calls=70, error=KeyboardInterrupt())
    with pytest.raises(JobInterrupted):
        run_attack_job(s, out=tmp_path / "cut", model=cut)
    assert 0 < len(_csv(tmp_path / "cut")) < 6
    resumed = run_attack_job(s, out=tmp_path / "cut", resume=True)
    assert _csv(tmp_path / "cut") == _csv(tmp_path / "full")
    for key in ("successes", "median_distance_at_budget", "median_queries_success"):
        assert resumed.summary[key] == full.summary[key]
    # every query of the cut-short part is still in the ledger
    assert resumed.summary["scored_inputs"] > full.summary["scored_inputs"]


def test_run_folder_records_the_hard_label_counting_rule(tmp_path):
    import json

    report = run_attack_job(spec(attack="rays", norm="linf", images=2), out=tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert "binary search" in meta["settings"]["counting_rule"]
    assert meta["spec"]["attack"] == "rays" and meta["spec"]["labels_only"] is True
    assert "distance_vs_queries.png" in report.written
    assert (tmp_path / "r" / "distance_vs_queries.png").read_bytes()[:4] == b"\x89PNG"
    assert "median_distance_at_budget" in report.summary
