"""The LIZO (ReLIZO) estimator: projection property, reuse of queried points, exact query
counts with reuse, per-example state (round trip, masked reset, subsets).

Probe rows are reconstructed from the points the wrapped function was actually called with,
so the checks do not trust the estimator's own bookkeeping.
"""

from __future__ import annotations

import copy

import pytest
import torch

from zoattack import make_generator
from zoattack.estimators import ESTIMATORS, create_estimator

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def lizo(**kwargs):
    kwargs.setdefault("mu", 1e-3)
    return create_estimator("lizo", **kwargs)


def projection(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of ``v`` onto the span of ``rows`` ``(n, d)``."""
    rows = rows.to(F64)
    return torch.linalg.pinv(rows) @ (rows @ v.to(F64))


def probe_rows(points: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Displacements of the queried points from ``x`` (the base point itself dropped)."""
    disp = points - x
    return disp[disp.abs().amax(1) > 0]


def is_among(rows: torch.Tensor, candidates: torch.Tensor, atol: float = 1e-12) -> bool:
    dist = torch.cdist(rows.to(F64), candidates.to(F64))
    return bool((dist.min(1).values <= atol).all())


def test_registered_as_stateful_forward_only():
    entry = ESTIMATORS.get("lizo")
    assert entry.flags["stateful"] is True
    assert entry.factory.supports_central is False


# ------------------------------------------------------------------------- the estimate
def test_first_estimate_is_the_projection_of_the_gradient_onto_the_probes(zo):
    d, n = 20, 6
    fn = zo.Linear(d)
    rec = zo.Recorder(fn)
    obj, _ = zo.objective_for(rec)
    x = zo.points(d)
    res = lizo(num_samples=n).estimate(obj, x, generator=make_generator(0))
    rows = probe_rows(rec.points(), x)
    assert rows.shape == (n, d)
    expected = projection(rows, fn.c)
    torch.testing.assert_close(res.grad[0], expected, rtol=1e-8, atol=1e-10)
    # n < d: only a projection, clearly not the whole gradient.
    assert (res.grad[0] - fn.c).norm() > 0.3 * fn.c.norm()


@pytest.mark.parametrize("function", ["quadratic", "mlp"])
def test_small_mu_estimate_is_the_projection_of_the_true_gradient(zo, function):
    d, n = 20, 8
    fn = zo.Quadratic(d) if function == "quadratic" else zo.TanhMLP(d)
    rec = zo.Recorder(fn)
    obj, _ = zo.objective_for(rec)
    x = zo.points(d, seed=3)
    res = lizo(num_samples=n, mu=1e-7).estimate(obj, x, generator=make_generator(1))
    expected = projection(probe_rows(rec.points(), x), fn.grad(x)[0])
    torch.testing.assert_close(res.grad[0], expected, rtol=1e-4, atol=1e-5)


def test_n_equal_d_recovers_the_gradient(zo):
    d = 9
    fn = zo.Linear(d)
    obj, _ = zo.objective_for(fn)
    x = zo.points(d, n=2)
    est = lizo(num_samples=50, reuse_distance_bound=1.0)  # capped at d
    assert est.queries_per_call(d) == d + 1
    gen = make_generator(0)
    for _ in range(3):  # also with reused rows
        res = est.estimate(obj, x, generator=gen)
        torch.testing.assert_close(res.grad, fn.grad(x), rtol=1e-7, atol=1e-9)
        x = x - 0.01 * res.grad


def test_mean_over_draws_is_n_over_d_of_the_gradient(zo):
    """E[projection onto a random n-dim subspace] = (n/d) * gradient (raw ReLIZO scale)."""
    d, n, draws = 10, 3, 4000
    fn = zo.Linear(d)
    obj, _ = zo.objective_for(fn)
    x = zo.points(d).expand(draws, d).clone()
    g = lizo(num_samples=n).estimate(obj, x, generator=make_generator(5)).grad
    target = n / d * fn.c
    assert (g.mean(0) - target).norm() < 0.1 * target.norm()


# --------------------------------------------------------------------------------- reuse
def two_calls(zo, *, d=20, n=8, bound=0.5, rate=0.5, step=0.01, fx2=False, **kw):
    fn = zo.Linear(d)
    rec = zo.Recorder(fn)
    obj, bb = zo.objective_for(rec)
    est = lizo(num_samples=n, reuse_distance_bound=bound, max_reuse_rate=rate, **kw)
    gen = make_generator(0)
    x1 = zo.points(d)
    r1 = est.estimate(obj, x1, generator=gen)
    first = rec.points()
    q1 = bb.total_queries
    x2 = x1 - step * r1.grad
    start = rec.calls
    fx = fn(x2) if fx2 else None
    r2 = est.estimate(obj, x2, generator=gen, fx=fx)
    return dict(
        fn=fn,
        est=est,
        x1=x1,
        x2=x2,
        r1=r1,
        r2=r2,
        first=first,
        second=rec.points(start),
        q1=q1,
        q2=bb.total_queries - q1,
        n=n,
        d=d,
    )


def test_reuse_rows_were_queried_before_and_cost_nothing(zo):
    c = two_calls(zo)
    n, d, est = c["n"], c["d"], c["est"]
    assert c["r1"].queries.item() == c["q1"] == est.queries_per_call(d) == n + 1
    q2 = c["r2"].queries.item()
    assert q2 == c["q2"]  # estimate agrees with the ledger
    n_fresh = c["second"].shape[0] - 1  # the call also scored f(x2)
    n_reused = n - n_fresh
    assert q2 == 1 + n - n_reused < est.queries_per_call(d)
    assert n_reused == int(0.5 * n)  # everything was close: the cap binds
    rows = est.state_dict()["tensors"]["disp"][0]
    x2 = c["x2"][0]
    # Fresh rows are exactly the points scored in this call; reused rows point at points
    # scored in the previous call (its probes or its center).
    assert torch.equal(rows[n_reused:] + x2, c["second"][1:])
    assert is_among(rows[:n_reused] + x2, c["first"])
    assert bool((rows[:n_reused].norm(dim=1) < 0.5).all())
    # With those rows, the estimate is still the exact projection (linear f: reused values
    # are exact), which also checks the Gram-matrix update against explicit products.
    torch.testing.assert_close(c["r2"].grad[0], projection(rows, c["fn"].c), rtol=1e-7, atol=1e-9)


def test_reuse_with_known_fx_costs_only_fresh_probes(zo):
    c = two_calls(zo, fx2=True)
    n_fresh = c["second"].shape[0]  # f(x2) was given: no base query
    assert c["r2"].queries.item() == c["q2"] == n_fresh == c["n"] - int(0.5 * c["n"])


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9])
def test_reuse_cap(zo, rate):
    c = two_calls(zo, rate=rate)
    n_reused = c["n"] + 1 - c["r2"].queries.item()
    assert n_reused == int(rate * c["n"])


def test_no_reuse_beyond_the_distance_bound(zo):
    assert two_calls(zo, bound=0.0)["r2"].queries.item() == 9  # default: reuse off
    assert two_calls(zo, bound=1e-6)["r2"].queries.item() == 9  # nothing that close
    assert lizo().reuse_distance_bound == 0.0


def test_orthogonal_fresh_probes(zo):
    c = two_calls(zo, orthogonal=True)
    n, d, mu = c["n"], c["d"], 1e-3
    rows = c["est"].state_dict()["tensors"]["disp"][0].to(F64)
    n_reused = n + 1 - c["r2"].queries.item()
    fresh = rows[n_reused:]
    gram = fresh @ fresh.T
    torch.testing.assert_close(
        gram, mu**2 * d * torch.eye(n - n_reused, dtype=F64), atol=1e-12, rtol=1e-6
    )
    cross = (
        fresh @ rows[:n_reused].T / (fresh.norm(dim=1, keepdim=True) * rows[:n_reused].norm(dim=1))
    )
    assert cross.abs().max() < 1e-8
    torch.testing.assert_close(c["r2"].grad[0], projection(rows, c["fn"].c), rtol=1e-7, atol=1e-9)


def test_ragged_reuse_across_examples(zo):
    """One example moved far (no reuse), one a little (reuse): each is charged its own cost."""
    d, n = 12, 6
    fn = zo.Linear(d)
    obj, bb = zo.objective_for(fn)
    est = lizo(num_samples=n, reuse_distance_bound=0.5)
    gen = make_generator(0)
    x = zo.points(d, n=2)
    est.estimate(obj, x, generator=gen)
    before = bb.queries
    x = x + torch.tensor([[5.0], [0.0]], dtype=F64)
    res = est.estimate(obj, x, generator=gen)
    assert res.queries.tolist() == (bb.queries - before).tolist() == [n + 1, n + 1 - n // 2]
    torch.testing.assert_close(
        res.grad[1], projection(est.state_dict()["tensors"]["disp"][1], fn.c), rtol=1e-7, atol=1e-9
    )


# --------------------------------------------------------------------------------- state
def descend(est, obj, x, gen, steps, lr=0.02, idx=None):
    out = []
    for _ in range(steps):
        res = est.estimate(obj, x, generator=gen, idx=idx)
        out.append((res.grad.clone(), res.queries.clone()))
        x = x - lr * res.grad
    return x, out


def test_state_round_trip_is_bitwise(zo):
    d = 15
    obj, _ = zo.objective_for(zo.TanhMLP(d))
    kw = dict(num_samples=6, reuse_distance_bound=0.5)
    a = lizo(**kw)
    gen = make_generator(3)
    x, hist = descend(a, obj, zo.points(d, n=3), gen, 3)
    assert any((q < 7).any() for _, q in hist)  # reuse happened: the state matters
    saved, gen_state, x_saved = a.state_dict(), gen.get_state(), x.clone()
    _, cont_a = descend(a, obj, x, gen, 3)  # mutating a must not leak into `saved`
    for _ in range(2):  # loading twice: the dict is not consumed
        b = lizo(**kw)
        b.load_state_dict(saved)
        gen_b = torch.Generator()
        gen_b.set_state(gen_state)
        _, cont_b = descend(b, obj, x_saved, gen_b, 3)
        for (ga, qa), (gb, qb) in zip(cont_a, cont_b):
            assert torch.equal(ga, gb) and torch.equal(qa, qb)
    # Without the state, the continuation differs (no reuse on its first call).
    fresh = lizo(**kw)
    gen_c = torch.Generator()
    gen_c.set_state(gen_state)
    _, cont_c = descend(fresh, obj, x_saved, gen_c, 1)
    assert not torch.equal(cont_c[0][1], cont_a[0][1])


@pytest.mark.parametrize(
    "mask", [torch.tensor([True, False, False]), torch.tensor([0])], ids=["bool", "ids"]
)
def test_reset_clears_only_the_masked_examples(zo, mask):
    d, n = 15, 6
    obj, _ = zo.objective_for(zo.TanhMLP(d))
    kw = dict(num_samples=n, reuse_distance_bound=0.5)
    a = lizo(**kw)
    gen = make_generator(3)
    x, _ = descend(a, obj, zo.points(d, n=3), gen, 2)
    b = lizo(**kw)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    a.reset(mask)
    gen_state = gen.get_state()
    ra = a.estimate(obj, x, generator=gen)
    gen.set_state(gen_state)
    rb = b.estimate(obj, x, generator=gen)
    assert ra.queries[0].item() == n + 1 > rb.queries[0].item()  # example 0 forgot
    assert torch.equal(ra.queries[1:], rb.queries[1:])  # the others did not
    # The others reuse the same probes (rows and values). Their fresh directions come from
    # the batch's one draw after example 0's, which now takes more of them (only fresh slots
    # get a direction), so those differ.
    for i in (1, 2):
        r = int(b.last_reused[i])
        assert r > 0 and int(a.last_reused[i]) == r
        for key in ("disp", "fvals"):
            assert torch.equal(a.state.tensors[key][i, :r], b.state.tensors[key][i, :r])
    a.reset()
    assert a.estimate(obj, x, generator=gen).queries.tolist() == [n + 1] * 3


def test_state_follows_global_example_ids(zo):
    d, n = 10, 4
    obj, bb = zo.objective_for(zo.Linear(d))
    est = lizo(num_samples=n, reuse_distance_bound=0.5)
    gen = make_generator(0)
    x = zo.points(d, n=3)
    idx = torch.tensor([7, 2, 4])
    res = est.estimate(obj, x, generator=gen, idx=idx)
    x = x - 0.01 * res.grad
    # Only example 4 continues; it reuses its own points. A new id starts empty.
    r4 = est.estimate(obj, x[2:], generator=gen, idx=torch.tensor([4]))
    assert r4.queries.item() == n + 1 - n // 2
    r9 = est.estimate(obj, x[2:], generator=gen, idx=torch.tensor([9]))
    assert r9.queries.item() == n + 1
    assert bb.queries[[2, 4, 7, 9]].tolist() == [n + 1, 2 * (n + 1) - n // 2, n + 1, n + 1]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_reuse_rate": 1.0}, "max_reuse_rate"),
        ({"max_reuse_rate": -0.1}, "max_reuse_rate"),
        ({"reuse_distance_bound": -1.0}, "reuse_distance_bound"),
        ({"reuse_distance_bound": float("nan")}, "reuse_distance_bound"),
        ({"difference": "central"}, "central"),
    ],
)
def test_invalid_lizo_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        lizo(**kwargs)
