"""Hard-label core: the labels-only oracle, the batched boundary search and OPT's g(theta).

A linear two-class model has a closed-form boundary distance along any ray, so g(theta)
and the searches are checked against exact values; ledgers are checked against a model
wrapper that counts every input it scores.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from zoattack import BlackBox, QueryBudgetExceeded, create_optimizer, make_generator
from zoattack.attacks.hardlabel import BoundaryDistance, LabelOracle
from zoattack.attacks.hardlabel.boundary import unit_directions
from zoattack.minimize import minimize
from zoattack.subspace import Subspace

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 6, 6)
D = 36


class LinearTwoClass(nn.Module):
    """Class 0 where ``w.x + b > 0``, else class 1; counts the inputs it scores."""

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w.double(), float(b)
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.seen += x.shape[0]
        s = x.flatten(1).double() @ self.w + self.b
        return torch.stack([s, -s], dim=1).float()


def linear_problem(n: int = 3, margin: float = 0.3, seed: int = 0):
    """Images near 0.5 classified 0 at ``margin`` from a unit-normal boundary."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    w /= w.norm()
    x0 = (0.5 + 0.05 * torch.rand(n, *SHAPE, generator=g)).float()
    s = x0.flatten(1).double() @ w
    b = (margin - s).mean()  # the same bias for all; margins differ slightly per image
    model = LinearTwoClass(w, float(b)).eval()
    return model, x0, torch.zeros(n, dtype=torch.int64), w


def analytic_g(x0: Tensor, theta: Tensor, w: Tensor, b: float, norm: str) -> Tensor:
    """Distance along ``theta / ||theta||_norm`` to ``w.x + b = 0`` (inf when moving away)."""
    dirs = unit_directions(theta.double(), norm).flatten(1)
    s = x0.flatten(1).double() @ w + b
    rate = dirs @ w
    return torch.where(rate < 0, s / -rate, torch.full_like(s, float("inf")))


def oracle_for(model, x0, label, *, budget=10_000, norm="l2", eps=0.1, bb_budget=None):
    bb = BlackBox(model, output="labels", budget=bb_budget)
    return LabelOracle(bb, x0, label, budget=budget, norm=norm, eps=eps), bb


def test_oracle_refuses_score_black_boxes():
    model, x0, y, _ = linear_problem()
    for output in ("logits", "probs"):
        with pytest.raises(ValueError, match="labels only"):
            LabelOracle(BlackBox(model, output=output), x0, y, budget=10, norm="l2", eps=1.0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_boundary_distance_matches_linear_classifier(norm):
    model, x0, y, w = linear_problem(n=3)
    oracle, bb = oracle_for(model, x0, y, norm=norm)
    obj = BoundaryDistance(oracle, tol=1e-4)
    gen = torch.Generator().manual_seed(3)
    # directions towards the boundary (mostly -w) with noise, several per image
    k = 4
    theta = -w.float().view(1, 1, D) + 0.3 * torch.randn(3, k, D, generator=gen)
    theta = theta.view(3 * k, *SHAPE)
    owner = torch.arange(3).repeat_interleave(k)
    want = analytic_g(x0[owner], theta, w, model.b, norm)
    assert bool(torch.isfinite(want).all())
    # the points stay inside [0, 1], so clipping does not bend the rays
    far = x0[owner] + want.float().view(-1, 1, 1, 1) * unit_directions(theta, norm)
    assert float(far.min()) > 0 and float(far.max()) < 1
    got = obj(theta, owner)
    cold = bb.total_queries
    assert torch.allclose(got, want, rtol=2e-4)
    assert bool((got >= want * (1 - 1e-6)).all())  # hi is always an adversarial point
    # the hint makes the next evaluation (a nearby direction) cheap
    before = bb.total_queries
    got2 = obj(theta + 1e-3 * torch.randn(theta.shape, generator=gen), owner)
    assert bool(torch.isfinite(got2).all())
    assert bb.total_queries - before < cold


def test_boundary_distance_is_scale_invariant_and_subspace_aware():
    model, x0, y, w = linear_problem(n=2)
    oracle, _ = oracle_for(model, x0, y)
    space = Subspace("tile:3", SHAPE)
    obj = BoundaryDistance(oracle, space, tol=1e-4)
    theta = -space.restrict(w.float().view(1, *SHAPE).expand(2, *SHAPE).clone())
    g1 = obj(theta, torch.arange(2))
    g2 = obj(7.0 * theta, torch.arange(2))
    want = analytic_g(x0, space.expand(theta), w, model.b, "l2")
    assert torch.allclose(g1, want, rtol=2e-4) and torch.allclose(g2, want, rtol=2e-4)


def test_ledger_equals_counted_questions_binary_search_included():
    model, x0, y, w = linear_problem(n=3)
    oracle, bb = oracle_for(model, x0, y)
    gen = torch.Generator().manual_seed(1)
    theta = -w.float().view(1, *SHAPE) + 0.2 * torch.randn(5, *SHAPE, generator=gen)
    theta[4] = w.float().view(SHAPE)  # away from the boundary: clipping never brings it back
    owner = torch.tensor([0, 0, 1, 2, 2])
    obj = BoundaryDistance(oracle)
    lam0 = torch.tensor([0.05, 2.0, 0.3, 0.31, 10.0], dtype=torch.float64)
    hi, probes = obj.search(theta, owner, lam0)
    per_image = torch.zeros(3, dtype=torch.int64).index_add_(0, owner, probes)
    assert torch.equal(bb.queries, per_image)
    assert torch.equal(oracle.spent(), per_image)
    assert model.seen == int(probes.sum()) == oracle.asked
    crossing = torch.isfinite(analytic_g(x0[owner], theta, w, model.b, "l2"))
    assert torch.equal(torch.isfinite(hi), crossing)
    # coarse steps and bisections were all counted; a ray that never crosses costs one
    # question at the cap (lam0 = 10 is past the box's diameter)
    assert bool((probes[crossing] >= 3).all())
    assert probes[~crossing].tolist() == [1] * int((~crossing).sum())


def test_line_search_stops_at_the_budget_and_keeps_a_valid_bracket():
    model, x0, y, w = linear_problem(n=2)
    oracle, bb = oracle_for(model, x0, y, budget=5)
    theta = -w.float().view(1, *SHAPE).repeat(4, 1, 1, 1)
    owner = torch.tensor([0, 0, 0, 1])
    obj = BoundaryDistance(oracle, tol=1e-6)
    hi, probes = obj.search(theta, owner, torch.full((4,), 0.01, dtype=torch.float64))
    assert int(bb.queries.max()) <= 5 and int(bb.queries[0]) == 5
    want = analytic_g(x0[owner], theta, w, model.b, "l2")
    finite = torch.isfinite(hi)
    assert bool((hi[finite] >= want[finite] * (1 - 1e-6)).all())
    with pytest.raises(QueryBudgetExceeded):
        oracle.ask(x0[:1], torch.tensor([0]))
    assert int(bb.queries[0]) == 5  # refused before scoring


def test_oracle_budget_is_counted_from_its_creation():
    model, x0, y, _ = linear_problem(n=2)
    bb = BlackBox(model, output="labels")
    bb.query(x0, torch.arange(2))  # history from an earlier run (resume)
    oracle = LabelOracle(bb, x0, y, budget=3, norm="l2", eps=1.0)
    assert oracle.remaining().tolist() == [3, 3]
    oracle.ask(x0.repeat(2, 1, 1, 1), torch.tensor([0, 0, 1, 1]))
    assert oracle.remaining().tolist() == [1, 1]
    assert oracle.affordable(torch.tensor([0, 0, 1])).tolist() == [True, False, True]


def test_oracle_keeps_best_adversarial_and_monotone_curve():
    model, x0, y, w = linear_problem(n=1, margin=0.2)
    oracle, _ = oracle_for(model, x0, y, eps=0.5)
    step = -w.float().view(1, *SHAPE)
    for lam in [1.0, 0.3, 2.0, 0.25, 0.1, 0.22]:
        oracle.ask((x0 + lam * step).clamp(0, 1), torch.tensor([0]))
    dists = [d for _, d in oracle.curve[0]]
    assert dists == sorted(dists, reverse=True) and len(dists) == 4  # 2.0 and 0.1 add none
    assert abs(oracle.best_dist[0].item() - 0.22) < 1e-5
    assert oracle.queries_to_eps[0].item() == 2  # 0.3 <= eps at the second question


@pytest.mark.parametrize("rule", ["zo_sgd", "radazo", "lizo", "zo_adamm"])
@pytest.mark.parametrize("estimator", [None, "gaussian", "coordinate"])
def test_core_rules_and_estimators_minimise_g(rule, estimator):
    """Any rule x estimator runs on g through the core's ``minimize``; g decreases and the
    ledger stays within budget even though an evaluation costs a variable number of queries."""
    model, x0, y, w = linear_problem(n=2)
    budget = 1200 if estimator == "coordinate" else 400  # coordinate: 2d evaluations a step
    oracle, bb = oracle_for(model, x0, y, budget=budget, bb_budget=budget)
    obj = BoundaryDistance(oracle, tol=1e-3)
    gen = make_generator(0)
    theta0 = (-w.float().view(1, *SHAPE) + 1.5 * torch.randn(2, *SHAPE, generator=gen)).clone()
    # g with clipping, measured on a separate unlimited oracle
    ref = BoundaryDistance(oracle_for(model, x0, y)[0], tol=1e-5)
    g0 = ref(theta0, torch.arange(2))
    lr = 0.02 if rule in ("zo_sgd", "lizo") else 0.01
    kwargs = {"lr": lr, "estimator": estimator, "mu": 0.01}
    if estimator != "coordinate":
        kwargs["num_samples"] = 6
    opt = create_optimizer(rule, **kwargs)
    res = minimize(obj, theta0, opt, generator=gen, budget=budget)
    assert int(bb.queries.max()) <= budget
    assert bool((oracle.best_dist < g0).all()), (g0, oracle.best_dist)
    if rule == "lizo" and estimator is None:
        # At this budget lizo's last iterate ends above g0 for about half of all seeds, with
        # either draw scheme of its estimator (12 and 13 of 24 example-runs, seeds 0-11):
        # only its best point is a property, not where the last step left it.
        return
    assert bool((ref(res.x, torch.arange(2)) < g0).all())
