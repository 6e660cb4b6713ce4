"""The attack loop: threat model, budgets, early stopping, determinism, query honesty."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zoattack import BlackBox, create_optimizer, make_generator
from zoattack.attacks import run_attack
from zoattack.norms import distance
from zoattack.optim import OPTIMIZERS


@pytest.fixture(scope="module")
def victim(digits_victim):
    return digits_victim


def attack(
    victim,
    rule="zo_signsgd",
    *,
    budget=200,
    norm="linf",
    eps=0.2,
    seed=0,
    lr=0.1,
    estimator=None,
    subspace="full",
    target=None,
    samples=None,
):
    model, x, y = victim
    bb = BlackBox(model, output="logits", budget=budget)
    # Search rules (flag "search") take their norm and the budget instead of an estimator.
    extra = {"norm": norm, "budget": budget} if OPTIMIZERS.get(rule).flags.get("search") else {}
    r = create_optimizer(rule, lr=lr, estimator=estimator, num_samples=samples, **extra)
    res = run_attack(
        bb,
        x,
        y,
        r,
        generator=make_generator(seed),
        norm=norm,
        eps=eps,
        budget=budget,
        subspace=subspace,
        target=target,
    )
    return res, bb


def test_attack_fools_most_images_and_stays_in_threat_model(victim):
    res, bb = attack(victim, budget=400)
    _, x, y = victim
    assert res.clean_correct.float().mean() > 0.8
    assert res.success[res.clean_correct].float().mean() > 0.6
    assert bool((distance(res.x_adv, x, "linf") <= 0.2 + 1e-6).all())
    assert bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())
    # success really means misclassified at the returned point
    with torch.no_grad():
        pred = victim[0](res.x_adv).argmax(1)
    assert bool((pred[res.success] != y[res.success]).all())
    assert bool((res.final_pred[res.success] == pred[res.success]).all())
    # the ledger is the black box's, and stop reasons explain every image
    assert torch.equal(res.queries, bb.queries[: len(y)])
    assert set(res.stop_reason) <= {"success", "budget", "misclassified", "steps"}
    for i, reason in enumerate(res.stop_reason):
        assert (reason == "success") == bool(res.success[i])


def test_misclassified_images_cost_one_query_and_are_skipped(victim):
    model, x, y = victim
    wrong = y.clone()
    wrong[:3] = (y[:3] + 1) % 10  # the model is right about y, so wrong about these labels
    res, _ = attack((model, x, wrong))
    skipped = ~res.clean_correct
    assert bool(skipped[:3].all())
    assert bool((res.queries[skipped] == 1).all())
    assert all(res.stop_reason[i] == "misclassified" for i in skipped.nonzero().flatten().tolist())
    assert not bool(res.success[skipped].any())


def test_finished_images_stop_consuming_queries(victim):
    small, _ = attack(victim, budget=100)
    large, _ = attack(victim, budget=400)
    done = small.success
    assert bool(done.any())
    # same seed: images that succeeded early spend exactly the same queries with a bigger budget
    assert torch.equal(small.queries[done], large.queries[done])
    assert bool((large.queries[done] <= 100).all())  # they finished within the small budget


def test_same_seed_identical_different_seed_differs(victim):
    a, _ = attack(victim, "lizo", lr=0.05, seed=1)
    b, _ = attack(victim, "lizo", lr=0.05, seed=1)
    c, _ = attack(victim, "lizo", lr=0.05, seed=2)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_l2_threat_model(victim):
    res, _ = attack(victim, "zo_sgd", norm="l2", eps=1.5, lr=0.5, estimator="gaussian")
    _, x, _ = victim
    assert bool((distance(res.x_adv, x, "l2") <= 1.5 * (1 + 1e-5)).all())
    assert res.success.any()


def test_targeted_attack_reaches_target(victim):
    _, x, y = victim
    target = (y + 1) % 10
    res, _ = attack(victim, budget=600, target=target)
    with torch.no_grad():
        pred = victim[0](res.x_adv).argmax(1)
    assert res.success.any()
    assert bool((pred[res.success] == target[res.success]).all())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rule=st.sampled_from(OPTIMIZERS.names()),
    estimator=st.sampled_from([None, "gaussian", "sphere", "rademacher", "dap"]),
    norm=st.sampled_from(["linf", "l2"]),
    budget=st.integers(2, 120),
    subspace=st.sampled_from(["full", "tile:4", "dct:5", "tile:2>tile:4>full"]),
    samples=st.integers(2, 6),
)
def test_queries_never_exceed_budget(victim, rule, estimator, norm, budget, subspace, samples):
    flags = OPTIMIZERS.get(rule).flags
    if flags.get("search"):  # estimator-free rules: no estimator options, only their norms
        assume(norm in flags.get("norms", ()))
        estimator = samples = None
    eps = 0.1 if norm == "linf" else 1.0
    res, bb = attack(
        victim,
        rule,
        budget=budget,
        norm=norm,
        eps=eps,
        lr=0.05,
        estimator=estimator,
        subspace=subspace,
        samples=samples,
    )
    assert int(res.queries.max()) <= budget
    assert int(bb.queries.max()) <= budget
    _, x, _ = victim
    tol = 1e-5
    assert bool((distance(res.x_adv, x, norm) <= eps * (1 + tol)).all())


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"norm": "l3"}, "norm must be"),
        ({"eps": -0.1}, "eps must be"),
        ({"eps": 1.5}, "whole [0,1]"),
        ({"budget": 1}, "budget must be"),
        ({"subspace": "tile:99"}, "tile size"),
        ({"subspace": "wavelet"}, "subspace must be"),
        ({"subspace": "dct:0"}, "dct size"),
        ({"subspace": "tile:2@50>full@9"}, "last stage"),
        ({"subspace": "tile:2@50>tile:4@20>full"}, "must not decrease"),
        ({"subspace": "tile:2>>full"}, "empty stage"),
    ],
)
def test_bad_settings_raise_clear_errors(victim, kwargs, needle):
    model, x, y = victim
    args = {"norm": "linf", "eps": 0.1, "budget": 100, "subspace": "full", **kwargs}
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        run_attack(
            BlackBox(model),
            x,
            y,
            create_optimizer("zo_sgd", lr=0.1),
            generator=make_generator(0),
            **args,
        )


def test_labels_only_black_box_is_refused(victim):
    model, x, y = victim
    with pytest.raises(ValueError, match="logits or probs"):
        run_attack(
            BlackBox(model, output="labels"),
            x,
            y,
            create_optimizer("zo_sgd", lr=0.1),
            generator=make_generator(0),
            norm="linf",
            eps=0.1,
            budget=50,
        )


def test_probability_black_box_works(victim):
    model, x, y = victim
    res = run_attack(
        BlackBox(model, output="probs", budget=200),
        x,
        y,
        create_optimizer("zo_signsgd", lr=0.1),
        generator=make_generator(0),
        norm="linf",
        eps=0.2,
        budget=200,
    )
    assert res.success.any()


def test_dct_basis_is_orthonormal_and_expansion_preserves_l2():
    from zoattack.subspace import Subspace, dct_matrix

    m = dct_matrix(8, 8, dtype=torch.float64)
    assert torch.allclose(m @ m.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    space = Subspace("dct:3", (1, 8, 8))
    v = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(
        space.expand(v).flatten(1).norm(dim=1), v.flatten(1).norm(dim=1), atol=1e-5
    )
    # the lowest frequency is a constant image
    e0 = torch.zeros(1, 1, 3, 3)
    e0[0, 0, 0, 0] = 1.0
    img = space.expand(e0)
    assert torch.allclose(img, torch.full_like(img, 1 / 8), atol=1e-6)


@pytest.mark.parametrize(
    "spec,norm,eps",
    [("dct:4", "linf", 0.1), ("dct:4", "l2", 0.5), ("tile:2", "l2", 0.5), ("full", "linf", 0.1)],
)
def test_subspace_projection_keeps_expansion_in_ball(spec, norm, eps):
    from zoattack.subspace import Subspace

    space = Subspace(spec, (1, 8, 8))
    v = 3 * torch.randn(5, *space.var_shape, generator=torch.Generator().manual_seed(1))
    d = space.expand(space.project(v, norm, eps)).flatten(1)
    size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5)).all())


def test_subspace_schedule_switch_points_and_restriction():
    from zoattack.subspace import Subspace, SubspaceSchedule

    sched = SubspaceSchedule("tile:2>tile:4>full", (1, 8, 8), budget=1000)
    assert sched.switch_at == [150, 400]
    assert [sched.stage(q) for q in (0, 149, 150, 399, 400, 999)] == [0, 0, 1, 1, 2, 2]
    assert SubspaceSchedule("tile:2@10>full", (1, 8, 8), budget=1000).switch_at == [10]
    # refining a coarse perturbation is exact
    coarse, fine = Subspace("tile:2", (1, 8, 8)), Subspace("tile:4", (1, 8, 8))
    v = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    delta = coarse.expand(v)
    assert torch.allclose(fine.expand(fine.restrict(delta)), delta)
    # unequal blocks (7 does not divide 8) still average each block
    odd = Subspace("tile:3", (1, 8, 8))
    w = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(odd.restrict(odd.expand(w)), w, atol=1e-6)


def test_coarse_to_fine_attack_runs_and_refines(victim):
    res, bb = attack(
        victim, "zo_signsgd", budget=300, subspace="tile:2@40>tile:4@100>full", lr=0.05
    )
    assert int(res.queries.max()) <= 300
    assert res.success.any()
