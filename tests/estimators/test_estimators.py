"""Properties every registered gradient estimator must have (parametrized over the registry).

Cases are chosen by capability: the ``stateful``/``random`` registry flags and the class's
``supports_central``; never by name.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoattack import BlackBox, FunctionObjective, make_generator
from zoattack.estimators import ESTIMATORS, create_estimator

pytestmark = pytest.mark.usefixtures("one_thread")

# Estimators that need a transfer prior on the objective (flag ``surrogate``: prior) have
# their own tests (test_prior.py); these run on plain objectives.
_PLAIN = [n for n in ESTIMATORS.names() if not ESTIMATORS.get(n).flags.get("surrogate")]
ALL = _PLAIN
STATELESS = [n for n in ESTIMATORS.names(stateful=False) if n in _PLAIN]
RANDOM = [n for n in ESTIMATORS.names(random=True) if n in _PLAIN]
DETERMINISTIC = [n for n in ESTIMATORS.names(random=False) if n in _PLAIN]
F64 = torch.float64


def differences(name: str) -> list[str]:
    central = ESTIMATORS.get(name).factory.supports_central
    return ["forward", "central"] if central else ["forward"]


WITH_DIFFERENCE = [(n, diff) for n in ALL for diff in differences(n)]


def run(est, fn_or_obj, x, seed=0, **kwargs):
    return est.estimate(fn_or_obj, x, generator=make_generator(seed), **kwargs)


# --------------------------------------------------------------------- accuracy vs autograd
@pytest.mark.parametrize("function", ["quadratic", "mlp"])
@pytest.mark.parametrize("name, difference", WITH_DIFFERENCE)
def test_large_k_estimate_aligns_with_autograd(zo, name, difference, function):
    d = 20
    fn = zo.Quadratic(d) if function == "quadratic" else zo.TanhMLP(d)
    obj, _ = zo.objective_for(fn)
    x = zo.points(d, n=3, seed=5)
    # Large K: random families average 400 directions; LIZO caps n at d (full interpolation)
    # and coordinate uses every coordinate.
    est = create_estimator(name, num_samples=400, mu=1e-5, difference=difference)
    g = run(est, obj, x).grad
    cos = zo.cosine(g, fn.grad(x))
    assert bool((cos > 0.9).all()), cos


@pytest.mark.parametrize("name, difference", [c for c in WITH_DIFFERENCE if c[0] in STATELESS])
def test_mean_over_draws_is_the_smoothed_gradient(zo, name, difference):
    """On a quadratic the smoothed gradient equals the true one; averaging many independent
    draws (one per example, all at the same point) must approach it. A wrong scaling constant
    (e.g. a missing factor d) would be off by a factor, far outside the tolerance."""
    d, n = 10, 4000
    fn = zo.Quadratic(d)
    obj, _ = zo.objective_for(fn)
    x = zo.points(d, seed=2).expand(n, d).clone()
    est = create_estimator(name, num_samples=5, mu=1e-4, difference=difference)
    g = run(est, obj, x, seed=11).grad
    true = fn.grad(x[:1])[0]
    rel = ((g.mean(0) - true).norm() / true.norm()).item()
    assert rel < 0.08, rel
    if name in RANDOM:  # single draws are noisy, so the check above was not trivial
        single = ((g - true).norm(dim=1) / true.norm()).median().item()
        assert single > 4 * rel


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_forward_error_is_order_mu_and_central_is_exact(zo, name):
    d = 8
    fn = zo.Quadratic(d)
    obj, _ = zo.objective_for(fn)
    x = zo.points(d, n=2, seed=4)
    true = fn.grad(x)
    errs = []
    for mu in (1e-2, 1e-3):
        g = run(create_estimator(name, num_samples=d, mu=mu), obj, x).grad
        errs.append((g - true).norm().item())
    assert errs[0] < 10 * 1e-2 * fn.A.diagonal().max().item() * d**0.5
    assert 7 < errs[0] / errs[1] < 13  # first order in mu
    if "central" in differences(name):
        g = run(create_estimator(name, num_samples=d, mu=1e-3, difference="central"), obj, x).grad
        torch.testing.assert_close(g, true, rtol=1e-7, atol=1e-7)


def test_coordinate_forward_bias_is_exactly_half_mu_diag(zo):
    d, mu = 8, 1e-3
    fn = zo.Quadratic(d)
    obj, _ = zo.objective_for(fn)
    x = zo.points(d, n=2, seed=4)
    g = run(create_estimator("coordinate", mu=mu), obj, x).grad
    # (f(x + mu e_i) - f(x)) / mu = g_i + mu/2 A_ii for a quadratic.
    torch.testing.assert_close(
        g - fn.grad(x), (mu / 2 * fn.A.diagonal()).expand(2, d), rtol=1e-5, atol=1e-9
    )


def test_coordinate_subset_scales_by_d_over_q(zo):
    d, q = 12, 3
    obj, bb = zo.objective_for(zo.Linear(d))
    x = zo.points(d, n=4)
    est = create_estimator("coordinate", num_samples=q, mu=1e-3)
    g = run(est, obj, x).grad
    nz = g != 0
    assert nz.sum(1).tolist() == [q] * 4
    c = zo.Linear(d).c.expand(4, d)
    torch.testing.assert_close(g[nz], (c * d / q)[nz])
    assert bb.queries.tolist() == [q + 1] * 4


# ---------------------------------------------------------------------------- query counts
@pytest.mark.parametrize("fx_mode", ["none", "given", "mixed"])
@pytest.mark.parametrize("k", [5, 9])
@pytest.mark.parametrize("name, difference", WITH_DIFFERENCE)
def test_query_counts_are_exact(zo, name, difference, k, fx_mode):
    d = 7
    fn = zo.Quadratic(d)
    obj, bb = zo.objective_for(fn)
    x = zo.points(d, n=3)
    idx = torch.tensor([4, 0, 2])
    fx = None
    known = torch.zeros(3, dtype=torch.bool)
    if fx_mode != "none":
        fx = fn(x)
        if fx_mode == "mixed":
            fx[1] = float("nan")
        known = ~torch.isnan(fx)
    est = create_estimator(name, num_samples=k, mu=1e-3, difference=difference)
    per_call = est.queries_per_call(d)
    res = run(est, obj, x, idx=idx, fx=fx)
    saved = (known & (difference == "forward")).long()
    expected = per_call - saved
    assert res.queries.dtype == torch.int64
    assert res.queries.tolist() == expected.tolist()
    ledger = bb.queries
    assert ledger[idx].tolist() == expected.tolist()
    assert ledger[[1, 3]].tolist() == [0, 0]  # examples not listed are never charged
    assert bb.total_queries == int(expected.sum())
    if difference == "forward":  # the loss at x is reported (scored or passed in)
        torch.testing.assert_close(res.loss, fn(x))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(ALL),
    d=st.integers(1, 12),
    k=st.integers(2, 7),
    n=st.integers(1, 3),
    central=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_query_counts_property(zo, name, d, k, n, central, seed):
    difference = "central" if central and "central" in differences(name) else "forward"
    obj, bb = zo.objective_for(zo.TanhMLP(d))
    est = create_estimator(name, num_samples=k, mu=1e-3, difference=difference)
    res = run(est, obj, zo.points(d, n=n, seed=seed), seed=seed)
    assert res.queries.tolist() == bb.queries.tolist() == [est.queries_per_call(d)] * n
    assert res.grad.shape == (n, d) and bool(torch.isfinite(res.grad).all())


# ------------------------------------------------------------------------ shapes and dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, difference", WITH_DIFFERENCE)
def test_multidimensional_inputs_keep_shape_and_dtype(name, difference, dtype):
    seen = []

    def fn(x):  # the black box hands over points in the input's own shape
        seen.append(tuple(x.shape[1:]))
        return (x.double() ** 2).flatten(1).sum(1)

    obj = FunctionObjective(BlackBox(fn, output="scores", bounds=None))
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    est = create_estimator(name, num_samples=4, mu=1e-2, difference=difference)
    g = run(est, obj, x).grad
    assert g.shape == x.shape and g.dtype == dtype
    assert bool(torch.isfinite(g).all())
    assert set(seen) == {(3, 2, 2)}


@pytest.mark.parametrize("name", ALL)
def test_unbatched_input_is_rejected(zo, name):
    obj, _ = zo.objective_for(zo.Linear(3))
    with pytest.raises(ValueError, match="x must be shaped"):
        run(create_estimator(name), obj, torch.zeros(3))


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ALL)
def test_same_seed_identical_different_seed_differs(zo, name):
    d = 12
    obj, _ = zo.objective_for(zo.TanhMLP(d))
    x = zo.points(d, n=2)

    def grad(seed):  # a fresh instance each time: stateful estimators start empty.
        # Default settings: the ``random`` flag describes the registered default.
        return run(create_estimator(name), obj, x, seed=seed).grad

    assert torch.equal(grad(3), grad(3))
    if name in RANDOM:
        assert not torch.equal(grad(3), grad(4))
    else:
        assert torch.equal(grad(3), grad(4))


@pytest.mark.parametrize("name, difference", WITH_DIFFERENCE)
def test_library_never_touches_the_global_rng(zo, name, difference):
    obj, _ = zo.objective_for(zo.Quadratic(6))
    x = zo.points(6, n=2)
    est = create_estimator(name, num_samples=4, difference=difference)
    before = torch.get_rng_state()
    for _ in range(2):
        run(est, obj, x)
    assert torch.equal(before, torch.get_rng_state())


# ----------------------------------------------------------------------- hyperparameters
BAD_COMMON = [
    ({"num_samples": 0}, "num_samples"),
    ({"num_samples": -2}, "num_samples"),
    ({"num_samples": 2.5}, "num_samples"),
    ({"mu": 0.0}, "mu"),
    ({"mu": -1e-3}, "mu"),
    ({"mu": float("nan")}, "mu"),
    ({"mu": float("inf")}, "mu"),
    ({"difference": "backward"}, "difference"),
]


@pytest.mark.parametrize("kwargs, needle", BAD_COMMON, ids=[str(b[0]) for b in BAD_COMMON])
@pytest.mark.parametrize("name", ALL)
def test_invalid_hyperparameters_name_the_argument(name, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_estimator(name, **kwargs)


@pytest.mark.parametrize("name", [n for n in ALL if "central" not in differences(n)])
def test_central_is_refused_where_unsupported(name):
    with pytest.raises(ValueError, match="central"):
        create_estimator(name, difference="central")


@pytest.mark.parametrize("name", ALL)
def test_mu_below_float32_resolution_is_rejected_but_fine_in_float64(zo, name):
    d = 20
    obj, bb = zo.objective_for(zo.Quadratic(d))
    est = create_estimator(name, num_samples=4, mu=1e-9)
    x32 = torch.full((2, d), 0.5, dtype=torch.float32)
    with pytest.raises(ValueError, match="mu"):
        run(est, obj, x32)
    assert bb.total_queries == 0  # refused before querying
    g = run(create_estimator(name, num_samples=4, mu=1e-9), obj, x32.double()).grad
    assert bool(torch.isfinite(g).all()) and bool((g != 0).any())


@pytest.mark.parametrize("name", ALL)
def test_integral_float_num_samples_behaves_like_the_int(zo, name):
    """``num_samples=4.0`` (e.g. from a config file) is accepted and costs what ``4`` costs."""
    d = 6
    obj, bb = zo.objective_for(zo.Quadratic(d))
    est = create_estimator(name, num_samples=4.0)
    res = run(est, obj, zo.points(d))
    assert (
        res.queries.tolist()
        == bb.queries.tolist()
        == [create_estimator(name, num_samples=4).queries_per_call(d)]
    )
