"""White-box PGD: the known optimum on a linear model, the ball and box, the gradient-call ledger,
restarts, determinism, and the training-time inner maximisations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoattack.attacks.pgd import PGD, check_threat, pgd_examples, random_start, trades_examples
from zoattack.norms import distance

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(d: int = 16, classes: int = 2, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(classes, d, generator=g))
        lin.bias.zero_()
    return lin


class Flat(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.flatten(1))


def test_linf_pgd_reaches_the_linear_optimum():
    # Two classes, linear scores, x0 in the middle of the box: the worst margin in the Linf
    # ball is margin - eps * ||w_y - w_other||_1, so PGD fools exactly the images where that
    # is negative.
    lin = _linear()
    with torch.no_grad():
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # the class boundary passes through 0.5
    model = Flat(lin).eval()
    g = torch.Generator().manual_seed(1)
    x0 = 0.4 + 0.2 * torch.rand(64, 1, 4, 4, generator=g)
    with torch.no_grad():
        z = model(x0)
    y = z.argmax(1)
    margin = (z.gather(1, y[:, None]) - z.gather(1, 1 - y[:, None])).squeeze(1)
    w = lin.weight.detach()
    l1 = (w[0] - w[1]).abs().sum()
    # eps halfway between the 32nd and 33rd smallest reachable margins: half the images fall.
    ratios = (margin / l1).sort().values
    eps = float(ratios[31] + ratios[32]) / 2
    assert eps < 0.1  # x0 +- eps stays inside the box, so clipping plays no part
    expected = margin < eps * l1
    assert int(expected.sum()) == 32
    res = PGD("linf", eps, steps=20, restarts=1).perturb(
        model, x0, y, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(res.success, expected)
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1)[res.success], 1 - y[res.success])
    assert torch.equal(res.final_pred, model(res.x_adv).argmax(1))


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_points_stay_in_ball_and_box_and_calls_are_counted(norm, eps):
    model = Flat(_linear(d=3 * 8 * 8, classes=5, seed=2)).eval()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(40, 3, 8, 8, generator=g)
    x0[:5] = 0.0  # on the box's corner: clipping matters
    y = model(x0).argmax(1).detach()
    steps, restarts = 6, 3
    res = PGD(norm, eps, steps=steps, restarts=restarts).perturb(
        model, x0, y, generator=torch.Generator().manual_seed(0)
    )
    assert (res.x_adv >= 0).all() and (res.x_adv <= 1).all()
    assert (distance(res.x_adv, x0, norm) <= eps * (1 + 1e-5)).all()
    assert torch.allclose(res.linf, distance(res.x_adv, x0, "linf"))
    assert (res.gradient_calls >= 1).all()
    assert (res.gradient_calls <= restarts * (steps + 1)).all()
    # Not fooled: every restart ran every step (plus its final check).
    never = ~res.success
    assert (res.gradient_calls[never] == restarts * (steps + 1)).all()
    assert (res.restarts[never] == restarts).all()
    # Fooled images stopped early: their calls end at the pass that fooled them.
    if res.success.any():
        assert (res.gradient_calls[res.success] <= res.restarts[res.success] * (steps + 1)).all()


def test_restarts_only_add_successes_and_runs_are_reproducible():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    for p in model.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.eval()
    x0 = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = model(x0).argmax(1).detach()
    state = torch.get_rng_state()

    def attack(restarts: int, seed: int = 0):
        # One short step: where each random start lands decides, so restarts add successes.
        return PGD("linf", 0.02, steps=1, step_size=0.005, restarts=restarts).perturb(
            model, x0, y, generator=torch.Generator().manual_seed(seed)
        )

    one, five = attack(1), attack(5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched
    assert bool((one.success <= five.success).all())  # restart 1 is the same run
    assert int(five.success.sum()) > int(one.success.sum())
    again = attack(5)
    assert torch.equal(again.x_adv, five.x_adv) and torch.equal(
        again.gradient_calls, five.gradient_calls
    )
    assert not torch.equal(attack(5, seed=1).x_adv, five.x_adv)


def test_no_early_stop_attacks_every_step():
    model = Flat(_linear(d=16, classes=2)).eval()
    x0 = torch.full((4, 1, 4, 4), 0.5)
    y = model(x0).argmax(1).detach()
    res = PGD("linf", 0.3, steps=4, early_stop=False).perturb(model, x0, y)
    assert (res.gradient_calls == 5).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"eps": 1.0}, "whole"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"step_size": 0.0}, "step size"),
        ({"loss": "hinge"}, "loss"),
        ({"norm": "l3"}, "norm"),
    ],
)
def test_bad_settings_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGD(**{"norm": "linf", "eps": 0.1, **kwargs})


def test_l2_eps_beyond_the_box_diagonal_is_refused():
    assert check_threat("l2", 7.9, 64) == "l2"
    with pytest.raises(ValueError, match="diagonal"):
        check_threat("l2", 8.0, 64)
    with pytest.raises(ValueError, match="diagonal"):
        PGD("l2", 9.0).perturb(Flat(_linear(64)), torch.rand(2, 1, 8, 8), torch.zeros(2).long())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_random_start_is_inside_ball_and_box(norm, eps):
    x0 = torch.rand(50, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    d = random_start(x0, norm, eps, torch.Generator().manual_seed(1))
    assert ((x0 + d) >= 0).all() and ((x0 + d) <= 1).all()
    assert (distance(x0 + d, x0, norm) <= eps * (1 + 1e-5)).all()
    assert float(distance(x0 + d, x0, norm).mean()) > 0.3 * eps


def test_training_inner_maximisations_raise_their_losses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()
    x0 = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(3))
    ce = nn.functional.cross_entropy
    x_pgd = pgd_examples(
        model, x0, y, norm="linf", eps=0.1, steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert not x_pgd.requires_grad
    assert (x_pgd - x0).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        assert float(ce(model(x_pgd), y)) > float(ce(model(x0), y)) + 0.01
    assert all(p.grad is None for p in model.parameters())  # input gradients only
    x_tr = trades_examples(
        model, x0, norm="l2", eps=0.5, steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert float(distance(x_tr, x0, "l2").max()) <= 0.5 + 1e-5
    p0 = torch.softmax(model(x0), 1)
    kl = nn.functional.kl_div(torch.log_softmax(model(x_tr), 1), p0, reduction="batchmean")
    assert float(kl) > 1e-3
    assert math.isfinite(float(kl))
