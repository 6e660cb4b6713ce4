"""The generic tricks every gradient rule can use (issue 12): restart when stuck, smoothing-
radius decay, APGD lr halving, vertex/stripes start. Each is per example and budget-relative,
and the attack loop's ledger stays exact with them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from zoattack import BlackBox, make_generator
from zoattack.attacks.base import run_attack, start_point
from zoattack.optim import create_optimizer
from zoattack.optim.base import apgd_checkpoints, halving_factor
from zoattack.subspace import Subspace

GRADIENT = ("zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")


class Split:
    """Example 0 sits on a plateau (its loss never improves); example 1 descends a quadratic."""

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        quad = (points.flatten(1).double() - 1.0).pow(2).sum(1)
        return torch.where(owner == 0, torch.ones_like(quad), quad)


@pytest.mark.parametrize(
    "bad",
    [
        {"start": "corner"},
        {"restart": -1},
        {"restart": 2.5},
        {"mu_decay": 0.0},
        {"mu_decay": 1.5},
        {"lr_decay": "cosine"},
        {"momentum": 1.0},
    ],
)
@pytest.mark.parametrize("rule", GRADIENT)
def test_bad_trick_values_are_refused(rule, bad):
    # Adaptive rules take betas, not momentum: any momentum is refused there, by name.
    with pytest.raises(ValueError):
        create_optimizer(rule, lr=0.1, **bad)


def test_restart_resets_only_the_stuck_example_and_returns_its_best_point():
    rule = create_optimizer("zo_signsgd", lr=0.1, momentum=0.9, restart=3, estimator="sphere")
    gen = make_generator(0)
    obj = Split()
    x0 = torch.zeros(2, 4)
    x = x0.clone()
    for t in range(1, 5):
        res = rule.step(obj, x, generator=gen)
        if t < 4:
            x = res.x_next
    # Example 0 stalled for 3 steps after its first: it restarts at step 4 from its best point
    # (the first one, x0), with momentum and step counter forgotten.
    assert torch.equal(res.x_next[0], x0[0])
    assert float(res.fx_next[0]) == 1.0
    m = rule.state.tensors["m"]
    assert bool((m[0] == 0).all()) and bool((m[1] != 0).any())
    assert rule.state.tensors["step"].tolist() == [0, 4]
    assert rule.state.tensors["stall"].tolist() == [0, 0]
    assert not math.isfinite(float(res.fx_next[1]))  # example 1 moved on: unknown loss
    assert rule.restarts == 1


def test_restart_resets_the_estimators_rows_too():
    rule = create_optimizer("lizo", lr=0.1, restart=2, num_samples=3, mu=0.01)
    gen = make_generator(0)
    x = torch.zeros(2, 5)
    for _ in range(3):
        x = rule.step(Split(), x, generator=gen).x_next
    valid = rule.estimator.state.tensors["valid"]  # type: ignore[union-attr]
    assert valid.tolist() == [False, True]  # LIZO's reuse buffer of example 0 was dropped


def test_apgd_checkpoints_and_halving_follow_the_formula():
    pts = apgd_checkpoints()
    assert pts[:3] == pytest.approx([0.22, 0.41, 0.57])
    gaps = [b - a for a, b in zip([0.0, *pts], pts, strict=False)]
    assert all(g >= 0.06 - 1e-12 for g in gaps) and pts[-1] < 1
    p = torch.tensor([0.0, 0.2199, 0.22, 0.5, 0.999], dtype=torch.float64)
    want = [1.0, 1.0, 0.5, 0.25, 0.5 ** len(pts)]
    assert halving_factor(p).tolist() == pytest.approx(want)


def test_lr_halving_reads_each_examples_progress():
    rule = create_optimizer("zo_sgd", lr=1.0, lr_decay="halving", estimator="gaussian")
    rule.set_progress(torch.tensor([0.0, 0.3, 0.45]))
    lr = rule._lr(torch.ones(3, dtype=torch.int64), torch.zeros(3, 2), torch.arange(3))
    assert lr.flatten().tolist() == [1.0, 0.5, 0.25]


def test_mu_decays_geometrically_with_the_most_advanced_example():
    rule = create_optimizer("zo_adamm", lr=0.01, mu=0.2, mu_decay=0.1, estimator="sphere")
    assert rule.estimator is not None and rule.estimator.mu == 0.2
    rule.set_progress(torch.tensor([0.25, 0.5]))
    rule.step(Split(), torch.zeros(2, 3), generator=make_generator(0))
    assert rule.estimator.mu == pytest.approx(0.2 * 0.1**0.5)
    rule.set_progress(torch.tensor([1.0, 1.0]))
    rule.step(Split(), torch.zeros(2, 3), generator=make_generator(0))
    assert rule.estimator.mu == pytest.approx(0.02)


def test_without_a_driver_the_schedules_stay_at_their_start():
    rule = create_optimizer("zo_sgd", lr=1.0, lr_decay="halving", mu=0.3, mu_decay=0.5)
    rule.step(Split(), torch.zeros(2, 3), generator=make_generator(0))
    assert rule.estimator is not None and rule.estimator.mu == 0.3


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_stripes_start_is_a_vertex_constant_down_each_column(norm, eps):
    rule = create_optimizer("zo_signsgd", lr=0.1, start="stripes")
    space = Subspace("tile:7", (1, 28, 28))
    v = start_point(
        rule, space, 4, norm, eps, make_generator(0), torch.float32, torch.device("cpu")
    )
    assert v is not None and v.shape == (4, 1, 7, 7)
    assert bool((v == v[:, :, :1, :]).all())  # one sign per column, over the full height
    if norm == "linf":
        assert bool((v.abs() == eps).all())
    else:
        assert space.expand(v).flatten(1).norm(dim=1).tolist() == pytest.approx([eps] * 4)
    vert = create_optimizer("zo_signsgd", lr=0.1, start="vertex")
    w = start_point(vert, space, 4, "linf", 0.1, make_generator(0), torch.float32, v.device)
    assert w is not None and not bool((w == w[:, :, :1, :]).all())
    zero = create_optimizer("zo_signsgd", lr=0.1)
    assert (
        start_point(zero, space, 4, "linf", 0.1, make_generator(0), torch.float32, v.device) is None
    )


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        return self.model(x)


TRICKS = {"start": "stripes", "restart": 2, "mu_decay": 0.2, "lr_decay": "halving"}


def _attack(model, x, y, rule_name, seed=0, **kw):
    victim = Counting(model).eval()
    bb = BlackBox(victim, output="logits", budget=150, input_shape=tuple(x.shape[1:]))
    rule = create_optimizer(rule_name, lr=0.05, mu=0.02, **{**TRICKS, **kw})
    res = run_attack(
        bb, x, y, rule, generator=make_generator(seed), norm="linf", eps=0.05, budget=150
    )
    return victim, bb, rule, res


@pytest.mark.parametrize("rule_name", GRADIENT)
def test_ledger_is_exact_with_every_trick_on(digits_victim, rule_name):
    model, x, y = digits_victim
    victim, bb, rule, res = _attack(model, x[:12], y[:12], rule_name)
    assert victim.rows == bb.total_queries == int(res.queries.sum())
    assert bool((res.queries <= 150).all())
    assert getattr(rule, "restarts", 0) > 0  # the patience of 2 steps did fire


def test_same_seed_same_attack_with_tricks(digits_victim):
    model, x, y = digits_victim
    a = _attack(model, x[:8], y[:8], "zo_signsgd", momentum=0.9)[3]
    b = _attack(model, x[:8], y[:8], "zo_signsgd", momentum=0.9)[3]
    c = _attack(model, x[:8], y[:8], "zo_signsgd", seed=1, momentum=0.9)[3]
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


class Recording(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(x.clone())
        return self.model(x)


def test_stripes_start_is_scored_as_the_first_query(digits_victim):
    # After the clean check, the first point each image scores is its stripes vertex, drawn
    # from the attack's generator (Square's init, counted as Square counts it).
    model, x, y = digits_victim
    victim = Recording(model).eval()
    bb = BlackBox(victim, output="logits", budget=50, input_shape=tuple(x.shape[1:]))
    rule = create_optimizer("zo_sgd", lr=0.05, mu=0.02, start="stripes", num_samples=3)
    res = run_attack(
        bb,
        x[:6],
        y[:6],
        rule,
        generator=make_generator(4),
        norm="linf",
        eps=0.05,
        budget=50,
        max_steps=1,
    )
    space = Subspace("full", tuple(x.shape[1:]))
    v0 = start_point(rule, space, 6, "linf", 0.05, make_generator(4), x.dtype, x.device)
    assert v0 is not None
    want = (x[:6] + v0).clamp(0, 1)
    first = victim.calls[1].view(6, 4, *x.shape[1:])[:, 0]  # rows: x, then 3 probes
    attacked = res.clean_correct
    assert torch.allclose(first[attacked], want[attacked])
    assert int(res.queries[attacked].min()) >= 2


class BoxLinear:
    """``w . clamp(p, -1, 1)``: scores its own projection of every point, like the attack
    objective; ``feasible`` says which point that is."""

    def __init__(self, w: Tensor, with_feasible: bool) -> None:
        self.w = w
        if with_feasible:
            self.feasible = lambda points, owner: points.clamp(-1.0, 1.0)

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        return (points.clamp(-1.0, 1.0).double() * self.w.double()).sum(1)


def test_lizo_interpolates_the_displacements_the_objective_really_scored():
    from zoattack.estimators import create_estimator

    d = 6
    w = torch.arange(1.0, d + 1, dtype=torch.float64)
    x = torch.ones(1, d)  # a vertex: every probe leaves the box in about half its coordinates
    errs = {}
    for feasible in (True, False):
        est = create_estimator("lizo", num_samples=d, mu=0.3)
        g = est.estimate(BoxLinear(w, feasible), x, generator=make_generator(0)).grad[0]
        stored = est.state.tensors["disp"][0].double()
        actual = (x + stored).clamp(-1, 1) - x  # what the objective really scored
        # The exact answer for a linear f: w projected onto the span of those displacements.
        proj = actual.T @ torch.linalg.pinv(actual @ actual.T) @ actual @ w
        errs[feasible] = float((g.double() - proj).norm() / proj.norm())
    assert errs[True] < 1e-4
    assert errs[False] > 0.1  # raw rows describe points that were never scored
