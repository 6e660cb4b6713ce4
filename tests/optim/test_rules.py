"""Gradient-based update rules, parametrized over the optimizer registry (cases chosen by the
``search`` / ``adaptive`` / ``sign`` flags and by constructor capabilities, never by name):
pure kernels, convergence within a query budget, every rule with every estimator, exact query
accounting, determinism, state round trips, masked reset, hyperparameter checks and ReLIZO's
Armijo line search."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

from zoattack import BlackBox, FunctionObjective, make_generator, minimize
from zoattack.estimators import ESTIMATORS, create_estimator
from zoattack.functions import get_function, starts
from zoattack.optim import OPTIMIZERS, create_optimizer
from zoattack.optim.lizo import lizo_update
from zoattack.optim.radazo import radazo_update
from zoattack.optim.zo_adamm import zo_adamm_update
from zoattack.optim.zo_sgd import zo_sgd_update
from zoattack.optim.zo_signsgd import zo_signsgd_update

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
# Rules built on a gradient estimator; estimator-free search rules (registry flag
# ``search``: candidate search in an attack's threat ball) are tested with the attacks.
RULES = [e.name for e in OPTIMIZERS if not e.flags.get("search", False)]
ADAPTIVE = [n for n in OPTIMIZERS.names(adaptive=True) if n in RULES]
SIGN = [n for n in OPTIMIZERS.names(sign=True) if n in RULES]
PLAIN_DESCENT = [n for n in OPTIMIZERS.names(adaptive=False, sign=False) if n in RULES]


def accepts(name: str, arg: str) -> bool:
    return arg in inspect.signature(OPTIMIZERS.get(name).factory).parameters


def default_estimator(name: str) -> str:
    return OPTIMIZERS.get(name).factory.default_estimator


LINE_SEARCH = [n for n in RULES if accepts(n, "line_search")]


def estimator_cases() -> list[tuple[str, str]]:
    out = []
    for est in ESTIMATORS.names():
        if ESTIMATORS.get(est).flags.get("surrogate"):
            continue  # needs a transfer prior on the objective: tests/estimators/test_prior.py
        out.append((est, "forward"))
        if ESTIMATORS.get(est).factory.supports_central:
            out.append((est, "central"))
    return out


# ------------------------------------------------------------------------ pure kernels
def test_zo_sgd_kernel():
    x, g = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, -4.0]])
    assert torch.equal(zo_sgd_update(x, g, 0.1), torch.tensor([[0.95, -1.6]]))


def test_zo_signsgd_kernel():
    x, g = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[0.5, -4.0, 0.0]])
    torch.testing.assert_close(zo_signsgd_update(x, g, 0.1)[0], torch.tensor([[0.9, -1.9, 3.0]]))
    # with momentum the sign is taken of the running average, not of the newest estimate
    m_old = torch.tensor([[-5.0, -5.0, 0.0]])
    x_next, m = zo_signsgd_update(x, g, 0.1, m_old, momentum=0.9)
    torch.testing.assert_close(m, 0.9 * m_old + 0.1 * g)
    torch.testing.assert_close(x_next, x - 0.1 * m.sign())


def test_zo_adamm_kernel_by_hand():
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.1
    x = torch.tensor([[1.0, 1.0]], dtype=F64)
    zeros = torch.zeros_like(x)
    g1, g2 = torch.tensor([[2.0, -1.0]], dtype=F64), torch.tensor([[0.0, -1.0]], dtype=F64)
    x1, m, v, vhat = zo_adamm_update(x, g1, zeros, zeros, zeros, lr, b1, b2, eps)
    m_ref, v_ref = (1 - b1) * g1, (1 - b2) * g1**2
    torch.testing.assert_close(m, m_ref)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(x1, x - lr * m_ref / (v_ref.sqrt() + eps))
    x2, m2, v2, vhat2 = zo_adamm_update(x1, g2, m, v, vhat, lr, b1, b2, eps)
    v2_ref = b2 * v_ref + (1 - b2) * g2**2
    torch.testing.assert_close(v2, v2_ref)
    torch.testing.assert_close(vhat2, torch.maximum(v_ref, v2_ref))  # AMSGrad max
    assert vhat2[0, 0] == v_ref[0, 0] > v2[0, 0]  # coordinate 0 decayed
    torch.testing.assert_close(x2, x1 - lr * m2 / (vhat2.sqrt() + eps))
    x2v, *_ = zo_adamm_update(x1, g2, m, v, vhat, lr, b1, b2, eps, use_vhat=False)
    torch.testing.assert_close(x2v, x1 - lr * m2 / (v2.sqrt() + eps))


def test_radazo_kernel_by_hand():
    b1, b2, eps, lr = 0.9, 0.99, 1e-12, 0.01
    x = torch.tensor([[0.5, -0.5, 2.0]], dtype=F64)
    g = torch.tensor([[3.0, -0.2, 1e-3]], dtype=F64)
    z = torch.zeros_like(x)
    one = torch.ones(1, dtype=torch.int64)
    # Official code (no bias correction): first step lr * sign(g) / sqrt(1 - b2).
    x1, m, v = radazo_update(x, g, z, z, one, lr, b1, b2, eps, bias_correction=False)
    torch.testing.assert_close(x1, x - lr * g.sign() / math.sqrt(1 - b2))
    torch.testing.assert_close(v, (1 - b2) * ((1 - b1) * g) ** 2)  # v from m, not from g
    # Bias-corrected: first step lr * sign(g).
    x1c, mc, vc = radazo_update(x, g, z, z, one, lr, b1, b2, eps, bias_correction=True)
    torch.testing.assert_close(x1c, x - lr * g.sign())
    # Second corrected step by hand.
    g2 = torch.tensor([[1.0, 0.3, -1.0]], dtype=F64)
    x2, m2, v2 = radazo_update(x1c, g2, mc, vc, 2 * one, lr, b1, b2, eps)
    m2_ref = b1 * mc + (1 - b1) * g2
    mhat = m2_ref / (1 - b1**2)
    v2_ref = b2 * vc + (1 - b2) * mhat**2
    torch.testing.assert_close(m2, m2_ref)
    torch.testing.assert_close(v2, v2_ref)
    torch.testing.assert_close(x2, x1c - lr * mhat / ((v2_ref / (1 - b2**2)).sqrt() + eps))


def test_lizo_kernel():
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    g = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    torch.testing.assert_close(lizo_update(x, g, 0.1), x - 0.1 * g)
    strict = lizo_update(x, g, 0.1, strict_lr=True)
    torch.testing.assert_close((x - strict).norm(dim=1), torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(strict[0], torch.tensor([1.0 - 0.06, 1.0 - 0.08]))


# --------------------------------------------------------------- rules use their kernel
@pytest.mark.parametrize("name", PLAIN_DESCENT)
def test_plain_descent_rules_step_along_the_estimate(zo, name):
    obj, _ = zo.objective_for(zo.Quadratic(8))
    x = zo.points(8, n=2)
    res = create_optimizer(name, lr=0.05).step(obj, x, generator=make_generator(0))
    torch.testing.assert_close(res.x_next, x - 0.05 * res.grad)


@pytest.mark.parametrize("decay", ["constant", "sqrt"])
@pytest.mark.parametrize("name", SIGN)
def test_sign_rules_move_each_coordinate_by_lr(zo, name, decay):
    obj, _ = zo.objective_for(zo.Quadratic(8))
    x = zo.points(8, n=2)
    rule = create_optimizer(name, lr=0.05, lr_decay=decay)
    gen = make_generator(0)
    for t in range(1, 5):
        res = rule.step(obj, x, generator=gen)
        lr_t = 0.05 if decay == "constant" else 0.05 / math.sqrt(t)
        moved = (res.x_next - x).abs()
        expected = torch.where(res.grad != 0, torch.full_like(moved, lr_t), torch.zeros_like(moved))
        torch.testing.assert_close(moved, expected)
        x = res.x_next


# --------------------------------------------------------------------------- convergence
# Learning rates found by a grid search (d=50, 3 starts, 1000 queries each) with a safety
# margin; a rule without an entry is tried on a coarse grid instead.
LRS = {
    "quadratic": {"lizo": 0.1, "radazo": 0.03, "zo_adamm": 0.03, "zo_sgd": 0.1, "zo_signsgd": 0.03},
    "rosenbrock": {
        "lizo": 0.01,
        "radazo": 0.003,
        "zo_adamm": 0.001,
        "zo_sgd": 0.01,
        "zo_signsgd": 0.003,
    },
}
GRID = (1e-3, 1e-2, 1e-1)
TARGET = {"quadratic": 0.2, "rosenbrock": 0.7}  # final / initial loss, worst of 3 starts


@pytest.mark.parametrize("function", ["quadratic", "rosenbrock"])
@pytest.mark.parametrize("name", RULES)
def test_every_rule_lowers_the_loss_within_a_budget(zo, name, function):
    d, budget = 50, 1000
    fn = get_function(function)
    x0 = starts(fn, 3, d, make_generator(0), F64)
    f0 = fn(x0)
    ratios = []
    lrs = [LRS[function][name]] if name in LRS[function] else GRID
    for lr in lrs:
        obj, bb = zo.objective_for(fn)
        rule = create_optimizer(name, lr=lr)
        res = minimize(obj, x0, rule, generator=make_generator(1), budget=budget)
        assert bool((res.queries <= budget).all())
        assert torch.equal(res.queries, bb.queries)
        ratio = (fn(res.x) / f0).max().item()
        ratios.append(ratio)
        if ratio < TARGET[function]:
            break
    assert min(ratios) < TARGET[function], (lrs, ratios)


# ------------------------------------------------------------- every rule x every estimator
@pytest.mark.parametrize("estimator, difference", estimator_cases())
@pytest.mark.parametrize("name", RULES)
def test_every_rule_runs_with_every_estimator(zo, name, estimator, difference):
    d = 6
    obj, bb = zo.objective_for(zo.TanhMLP(d))
    x = zo.points(d, n=2)
    rule = create_optimizer(
        name, lr=0.01, estimator=estimator, num_samples=4, difference=difference
    )
    gen = make_generator(0)
    total = torch.zeros(2, dtype=torch.int64)
    for _ in range(2):
        res = rule.step(obj, x, generator=gen)
        assert res.x_next.shape == x.shape and res.x_next.dtype == x.dtype
        assert bool(torch.isfinite(res.x_next).all()) and bool(torch.isfinite(res.grad).all())
        assert bool((res.queries <= rule.max_queries_per_step(d)).all())
        total += res.queries
        x = res.x_next
    assert torch.equal(total, bb.queries)


# ------------------------------------------------------------------------- query counts
@pytest.mark.parametrize("name", RULES)
def test_step_queries_match_the_ledger_and_only_listed_examples_pay(zo, name):
    d = 10
    fn = zo.Quadratic(d)
    obj, bb = zo.objective_for(fn)
    rule = create_optimizer(name, lr=0.01)
    idx = torch.tensor([3, 0])
    x = zo.points(d, n=2)
    res = rule.step(obj, x, generator=make_generator(0), idx=idx)
    assert res.queries.tolist() == bb.queries[idx].tolist()
    assert res.queries.tolist() == [rule.max_queries_per_step(d)] * 2  # no reuse yet
    assert bb.queries[[1, 2]].tolist() == [0, 0]
    torch.testing.assert_close(res.loss, fn(x))
    # With f(x) supplied the base query is saved.
    before = bb.queries
    res = rule.step(obj, res.x_next, generator=make_generator(1), idx=idx, fx=fn(res.x_next))
    assert res.queries.tolist() == (bb.queries - before)[idx].tolist()
    assert bool((res.queries < rule.max_queries_per_step(d)).all())


# --------------------------------------------------------------------------- determinism
def trajectory(rule, obj, x, seed, steps=3, idx=None):
    gen = make_generator(seed)
    out = []
    for _ in range(steps):
        x = rule.step(obj, x, generator=gen, idx=idx).x_next
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("name", RULES)
def test_same_seed_identical_different_seed_differs(zo, name):
    obj, _ = zo.objective_for(zo.TanhMLP(8))
    x = zo.points(8, n=2)
    a = trajectory(create_optimizer(name, lr=0.01), obj, x, 5)
    b = trajectory(create_optimizer(name, lr=0.01), obj, x, 5)
    assert torch.equal(a, b)
    c = trajectory(create_optimizer(name, lr=0.01), obj, x, 6)
    if default_estimator(name) in ESTIMATORS.names(random=True):
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", RULES)
def test_rule_steps_never_touch_the_global_rng(zo, name):
    obj, _ = zo.objective_for(zo.TanhMLP(8))
    kwargs = {"line_search": "armijo"} if name in LINE_SEARCH else {}
    rule = create_optimizer(name, lr=0.01, **kwargs)
    before = torch.get_rng_state()
    trajectory(rule, obj, zo.points(8, n=2), 0)
    assert torch.equal(before, torch.get_rng_state())


# ------------------------------------------------------------------------ state handling
# The sqrt decay makes even the plainest rule's state (its step counter) matter.
STATEFUL = {"lr": 0.01, "lr_decay": "sqrt"}


@pytest.mark.parametrize("name", RULES)
def test_state_round_trip_is_bitwise(zo, name):
    obj, _ = zo.objective_for(zo.TanhMLP(8))
    a = create_optimizer(name, **STATEFUL)
    gen = make_generator(2)
    x = zo.points(8, n=3)
    for _ in range(3):
        x = a.step(obj, x, generator=gen).x_next
    saved, gen_state, x_saved = a.state_dict(), gen.get_state(), x.clone()
    assert saved["rule"]["tensors"]  # there is state to lose
    cont_a = []
    for _ in range(3):  # continuing `a` must not change what was saved
        res = a.step(obj, x, generator=gen)
        cont_a.append((res.x_next, res.queries))
        x = res.x_next
    for _ in range(2):  # two independent copies from the same snapshot
        b = create_optimizer(name, **STATEFUL)
        b.load_state_dict(saved)
        gen_b = torch.Generator()
        gen_b.set_state(gen_state)
        xb = x_saved
        for xa, qa in cont_a:
            res = b.step(obj, xb, generator=gen_b)
            assert torch.equal(res.x_next, xa) and torch.equal(res.queries, qa)
            xb = res.x_next
    # The state matters: a fresh rule from the same point and generator goes elsewhere.
    fresh = create_optimizer(name, **STATEFUL)
    gen_c = torch.Generator()
    gen_c.set_state(gen_state)
    assert not torch.equal(fresh.step(obj, x_saved, generator=gen_c).x_next, cont_a[0][0])


@pytest.mark.parametrize(
    "mask", [torch.tensor([True, False, False]), torch.tensor([0])], ids=["bool", "ids"]
)
@pytest.mark.parametrize("name", RULES)
def test_reset_clears_only_the_masked_examples(zo, name, mask):
    obj, _ = zo.objective_for(zo.TanhMLP(8))
    a = create_optimizer(name, **STATEFUL)
    gen = make_generator(2)
    x = zo.points(8, n=3)
    for _ in range(3):
        x = a.step(obj, x, generator=gen).x_next
    unreset = create_optimizer(name, **STATEFUL)
    unreset.load_state_dict(copy.deepcopy(a.state_dict()))
    a.reset(mask)

    def step(rule, i):
        return rule.step(obj, x[i : i + 1], generator=make_generator(9), idx=torch.tensor([i]))

    # Example 0 now behaves exactly like a fresh start, examples 1 and 2 as before.
    r0, f0 = step(a, 0), step(create_optimizer(name, **STATEFUL), 0)
    assert torch.equal(r0.x_next, f0.x_next) and torch.equal(r0.queries, f0.queries)
    assert not torch.equal(r0.x_next, step(unreset, 0).x_next)
    for i in (1, 2):
        ri, ui = step(a, i), step(unreset, i)
        assert torch.equal(ri.x_next, ui.x_next) and torch.equal(ri.queries, ui.queries)


# ------------------------------------------------------------------------ hyperparameters
BAD_LR = [0.0, -0.1, float("nan"), float("inf")]


@pytest.mark.parametrize("lr", BAD_LR)
@pytest.mark.parametrize("name", RULES)
def test_bad_lr_is_rejected(name, lr):
    with pytest.raises(ValueError, match="lr"):
        create_optimizer(name, lr=lr)
    with pytest.raises(ValueError, match="lr"):
        create_optimizer(name, lr=torch.tensor([0.1, lr]))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"lr_decay": "linear"}, "lr_decay"),
        ({"num_samples": 0}, "num_samples"),
        ({"mu": 0.0}, "mu"),
        ({"mu": float("nan")}, "mu"),
        ({"difference": "sideways"}, "difference"),
    ],
)
@pytest.mark.parametrize("name", RULES)
def test_bad_rule_or_estimator_options_are_rejected(name, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_optimizer(name, lr=0.1, **kwargs)


@pytest.mark.parametrize("name", RULES)
def test_estimator_instance_excludes_estimator_options(name):
    est = create_estimator("gaussian")
    assert create_optimizer(name, lr=0.1, estimator=est).estimator is est
    with pytest.raises(ValueError, match="estimator"):
        create_optimizer(name, lr=0.1, estimator=est, num_samples=3)


FORWARD_ONLY_DEFAULT = [
    n for n in RULES if not ESTIMATORS.get(default_estimator(n)).factory.supports_central
]


@pytest.mark.parametrize("name", FORWARD_ONLY_DEFAULT)
def test_central_rejected_with_a_forward_only_default_estimator(name):
    with pytest.raises(ValueError, match="central"):
        create_optimizer(name, lr=0.1, difference="central")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.9)}, "betas"),
        ({"betas": (0.9, float("nan"))}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"eps": float("nan")}, "eps"),
    ],
)
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_rules_check_betas_and_eps(name, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_optimizer(name, lr=0.1, **kwargs)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"line_search": "wolfe"}, "line_search"),
        ({"line_search": "armijo", "c1": 0.0}, "c1"),
        ({"line_search": "armijo", "shrink": 1.0}, "shrink"),
        ({"line_search": "armijo", "max_line_search": 0}, "max_line_search"),
        ({"max_reuse_rate": 1.0}, "max_reuse_rate"),
    ],
)
@pytest.mark.parametrize("name", LINE_SEARCH)
def test_line_search_rules_check_their_options(name, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_optimizer(name, lr=0.1, **kwargs)


# ---------------------------------------------------------------------- Armijo line search
@pytest.mark.parametrize("name", LINE_SEARCH)
def test_armijo_never_increases_the_loss_and_its_queries_are_counted(zo, name):
    d, lr = 20, 1.0
    fn = get_function("rosenbrock")
    rec = zo.Recorder(fn)
    obj, bb = zo.objective_for(rec)
    x = starts(fn, 3, d, make_generator(0), F64)
    rule = create_optimizer(name, lr=lr, line_search="armijo")
    gen = make_generator(1)
    fx = None
    searched = 0
    for _ in range(15):
        ids = torch.arange(3)
        before, calls = bb.queries_of(ids).clone(), rec.calls
        res = rule.step(obj, x, generator=gen, fx=fx)
        spent = bb.queries_of(ids) - before
        assert res.queries.tolist() == spent.tolist()
        assert sum(b.shape[0] for b in rec.batches[calls:]) == int(spent.sum())
        searched += rec.calls - calls - 1  # calls beyond the estimator's one batched call
        assert bool((res.queries <= rule.max_queries_per_step(d)).all())
        torch.testing.assert_close(res.loss, fn(x))
        torch.testing.assert_close(res.fx_next, fn(res.x_next))  # reported value is real
        assert bool((res.fx_next <= res.loss).all())  # never uphill
        stayed = (res.x_next == x).all(dim=1)
        assert bool((res.fx_next[~stayed] < res.loss[~stayed]).all())
        x, fx = res.x_next, res.fx_next
    assert searched >= 15  # at least one trial evaluation per step, all of them charged
    # Without the line search the same lr goes uphill on this problem.
    plain = create_optimizer(name, lr=lr)
    obj2, _ = zo.objective_for(fn)
    x = starts(fn, 3, d, make_generator(0), F64)
    gen = make_generator(1)
    uphill = False
    for _ in range(15):
        res = plain.step(obj2, x, generator=gen)
        uphill = bool((fn(res.x_next) > fn(x)).any())
        if uphill:
            break
        x = res.x_next
    assert uphill


def test_signsgd_momentum_is_validated_and_kept_per_example():
    with pytest.raises(ValueError, match="momentum"):
        create_optimizer("zo_signsgd", lr=0.1, momentum=1.0)
    rule = create_optimizer("zo_signsgd", lr=0.1, momentum=0.9)
    f = lambda x: (x**2).sum(-1)  # noqa: E731
    obj = FunctionObjective(BlackBox(f, output="scores", bounds=None))
    x = torch.ones(3, 5)
    rule.step(obj, x, generator=make_generator(0))
    assert rule.state.tensors["m"].shape == (3, 5)
    rule.reset(torch.tensor([True, False, False]))
    assert bool((rule.state.tensors["m"][0] == 0).all())
    assert bool((rule.state.tensors["m"][1] != 0).any())
