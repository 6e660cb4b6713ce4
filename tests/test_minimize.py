"""minimize(): per-example query budgets, stopping rules, history, projection and the
hand-over of known f(x) values between steps."""

from __future__ import annotations

import pytest
import torch

from zoattack import create_optimizer, make_generator, minimize
from zoattack.functions import get_function, starts
from zoattack.optim import OPTIMIZERS

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def problem(zo, n=3, d=10, function="quadratic"):
    fn = get_function(function)
    obj, bb = zo.objective_for(fn)
    return fn, obj, bb, starts(fn, n, d, make_generator(0), F64)


@pytest.mark.parametrize("budget", [1, 11, 57, 200])
@pytest.mark.parametrize("name", [e.name for e in OPTIMIZERS if not e.flags.get("search")])
def test_budget_is_never_exceeded_and_is_used_up(zo, name, budget):
    fn, obj, bb, x0 = problem(zo)
    rule = create_optimizer(name, lr=0.01)
    res = minimize(obj, x0, rule, generator=make_generator(1), budget=budget)
    cost = rule.max_queries_per_step(x0.shape[1])
    assert torch.equal(res.queries, bb.queries)
    assert bool((res.queries <= budget).all())
    assert bool((budget - res.queries < cost).all())  # another worst-case step would not fit
    assert res.stop_reason == ["budget"] * 3
    assert res.x.shape == x0.shape
    for hist, steps in zip(res.history, res.steps.tolist()):
        assert len(hist) == steps
        qs = [q for q, _ in hist]
        assert qs == sorted(qs) and len(set(qs)) == len(qs)


def test_only_new_queries_count_against_the_budget(zo):
    fn, obj, bb, x0 = problem(zo, n=2)
    obj(torch.zeros(5, 10, dtype=F64), torch.tensor([0, 0, 0, 1, 1]))  # earlier spending
    res = minimize(
        obj, x0, create_optimizer("zo_sgd", lr=0.01), generator=make_generator(0), budget=30
    )
    assert torch.equal(bb.queries, res.queries + torch.tensor([3, 2]))
    assert bool((res.queries <= 30).all())


def test_max_steps(zo):
    fn, obj, bb, x0 = problem(zo)
    res = minimize(
        obj,
        x0,
        create_optimizer("zo_sgd", lr=0.01),
        generator=make_generator(0),
        budget=10**6,
        max_steps=4,
    )
    assert res.steps.tolist() == [4, 4, 4]
    assert res.stop_reason == ["steps"] * 3


def test_target_stops_an_example_and_it_spends_nothing_more(zo):
    fn, obj, bb, x0 = problem(zo, n=2)
    x0[1] = 1e-4  # already essentially at the minimum
    rule = create_optimizer("zo_sgd", lr=0.01)
    ticks = []
    res = minimize(
        obj,
        x0,
        rule,
        generator=make_generator(0),
        budget=500,
        target=1e-6,
        callback=lambda t, spent, best: ticks.append((t, spent.clone())),
    )
    assert res.stop_reason == ["budget", "target"]
    assert res.steps[1].item() == 1
    assert res.queries[1].item() == rule.max_queries_per_step(10)
    assert res.loss[1].item() <= 1e-6
    assert [t for t, _ in ticks] == list(range(1, len(ticks) + 1))
    assert all(spent[1].item() == res.queries[1].item() for _, spent in ticks)


def test_reported_losses_are_true_losses_under_projection_and_line_search(zo):
    """A known f(x_next) from the line search must not be reused when the projection moved
    the point: every loss in the history is f at the point the step started from."""
    fn = get_function("rosenbrock")
    obj, _ = zo.objective_for(fn)
    x0 = starts(fn, 1, 12, make_generator(0), F64)
    visited = [x0.clone()]

    def project(x):
        out = x.clamp(-0.15, 0.15)
        visited.append(out.clone())
        return out

    rule = create_optimizer("lizo", lr=0.3, line_search="armijo")
    res = minimize(obj, x0, rule, generator=make_generator(0), budget=300, project=project)
    assert bool((res.x.abs() <= 0.15).all())
    losses = torch.tensor([loss for _, loss in res.history[0]], dtype=F64)
    assert len(losses) > 5
    torch.testing.assert_close(losses, fn(torch.cat(visited[: len(losses)])))
    assert any(bool((v.abs() == 0.15).any()) for v in visited[1:])  # projection did act


def test_same_seed_same_result(zo):
    fn, obj, _, x0 = problem(zo)
    runs = [
        minimize(
            obj, x0, create_optimizer("zo_adamm", lr=0.01), generator=make_generator(s), budget=100
        ).x
        for s in (4, 4, 5)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_bad_budget(zo):
    fn, obj, _, x0 = problem(zo)
    with pytest.raises(ValueError, match="budget"):
        minimize(obj, x0, create_optimizer("zo_sgd", lr=0.1), generator=make_generator(0), budget=0)


def test_blown_up_iterates_stop_as_diverged_and_keep_their_ledger(zo):
    fn, obj, bb, x0 = problem(zo, n=3)
    x0 = x0.float()  # float32 resolution is reached after a few exploding steps
    rule = create_optimizer("zo_sgd", lr=50.0, estimator="gaussian")
    res = minimize(obj, x0, rule, generator=make_generator(0), budget=10**6)
    assert res.stop_reason == ["diverged"] * 3
    assert torch.equal(res.queries, bb.queries)  # the refused step scored nothing
    assert bool((fn(res.x) > 100 * fn(x0)).all())  # checked outside the ledger
    assert bool((res.steps >= 1).all())


def test_a_radius_below_resolution_at_the_start_is_still_an_error(zo):
    from zoattack.errors import PrecisionError

    fn, obj, bb, x0 = problem(zo, n=2)
    rule = create_optimizer("zo_sgd", lr=0.01, estimator="gaussian", mu=1e-12)
    with pytest.raises(PrecisionError, match="resolution"):
        minimize(obj, (x0 * 1e3).float(), rule, generator=make_generator(0), budget=100)
    assert int(bb.queries.sum()) == 0
