"""DAP (directionally aligned perturbations): the two stages are reconstructed from the points
the wrapped function was called with, and checked against the construction in
ESTIMATORS.md §4.2: ``(v^T a)^2 = ||a||^2`` exactly, ``E[v v^T] = I``, the combine rule, and
the pilot/aligned split of the query budget."""

from __future__ import annotations

import pytest
import torch

from zoattack import make_generator
from zoattack.estimators import create_estimator

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
MU = 1e-3


def stages(zo, fn, x, **kwargs):
    """Run DAP (forward) on ``x`` ``(N, d)``; return the estimate and the reconstructed
    pilot directions ``z`` ``(N, B1, d)``, pilot ``a`` ``(N, d)``, aligned ``v`` ``(N, B2, d)``
    and the aligned-stage estimate ``g_dap``."""
    rec = zo.Recorder(fn)
    obj, bb = zo.objective_for(rec, max_batch=1 << 30)
    est = create_estimator("dap", mu=MU, **kwargs)
    res = est.estimate(obj, x, generator=make_generator(kwargs.pop("seed", 0)))
    assert rec.calls == 2  # one batched call per stage
    n, d = x.shape
    b1, b2 = est.pilot_samples, est.num_samples - est.pilot_samples
    pilot = rec.batches[0].reshape(n, b1 + 1, d)  # base point first, then the probes
    assert torch.equal(pilot[:, 0], x)
    z = (pilot[:, 1:] - x.unsqueeze(1)) / MU
    f0 = fn(x)
    fz = fn(pilot[:, 1:].reshape(-1, d)).reshape(n, b1)
    a = torch.einsum("nk,nkd->nd", (fz - f0.unsqueeze(1)) / MU, z) / b1
    aligned = rec.batches[1].reshape(n, b2, d)  # f(x) is known: no second base query
    v = (aligned - x.unsqueeze(1)) / MU
    fv = fn(aligned.reshape(-1, d)).reshape(n, b2)
    g_dap = torch.einsum("nk,nkd->nd", (fv - f0.unsqueeze(1)) / MU, v) / b2
    assert res.queries.tolist() == bb.queries.tolist() == [b1 + b2 + 1] * n
    return res, z, a, v, g_dap


@pytest.mark.parametrize("direction", ["sphere", "gaussian"])
def test_aligned_directions_satisfy_the_dap_condition(zo, direction):
    d = 16
    fn = zo.TanhMLP(d)
    x = zo.points(d, n=3)
    res, z, a, v, g_dap = stages(zo, fn, x, num_samples=10, direction=direction)
    # The pilot directions lie on the sphere of radius sqrt(d) (no factor d needed).
    torch.testing.assert_close(
        z.norm(dim=-1), torch.full(z.shape[:2], d**0.5, dtype=F64), rtol=1e-8, atol=0
    )
    proj = torch.einsum("nkd,nd->nk", v, a)
    torch.testing.assert_close(
        proj.abs(), a.norm(dim=1, keepdim=True).expand_as(proj), rtol=1e-6, atol=0
    )
    # Default combine is the synthetic notebook's average of pilot and aligned estimates.
    torch.testing.assert_close(res.grad, (a + g_dap) / 2, rtol=1e-6, atol=1e-9)


def test_combine_dap_returns_the_aligned_stage_only(zo):
    d = 12
    fn = zo.Quadratic(d)
    res, _, _, _, g_dap = stages(zo, fn, zo.points(d, n=2), num_samples=8, combine="dap")
    torch.testing.assert_close(res.grad, g_dap, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("direction", ["sphere", "gaussian"])
def test_aligned_directions_are_isotropic(zo, direction):
    """E[v v^T] = (I - a a^T/|a|^2) + a a^T/|a|^2 = I (delta-unbiased with delta = 1)."""
    d, n = 5, 3000
    x = zo.points(d).expand(n, d).clone()
    _, _, _, v, _ = stages(zo, zo.Quadratic(d), x, num_samples=4, direction=direction)
    v = v.reshape(-1, d)
    second = v.T @ v / v.shape[0]
    assert (second - torch.eye(d, dtype=F64)).abs().max() < 0.12


def test_pilot_samples_split_the_budget(zo):
    d = 9
    rec = zo.Recorder(zo.Linear(d))
    obj, bb = zo.objective_for(rec)
    est = create_estimator("dap", num_samples=10, pilot_samples=3)
    est.estimate(obj, zo.points(d, n=2), generator=make_generator(0))
    assert [b.shape[0] for b in rec.batches] == [2 * (3 + 1), 2 * 7]
    assert bb.queries.tolist() == [11, 11]


def test_flat_pilot_falls_back_to_plain_directions(zo):
    d = 8
    rec = zo.Recorder(lambda x: torch.zeros(x.shape[0], dtype=F64))
    obj, _ = zo.objective_for(rec)
    x = zo.points(d, n=2)
    res = create_estimator("dap", num_samples=6, mu=MU).estimate(
        obj, x, generator=make_generator(0)
    )
    assert torch.equal(res.grad, torch.zeros_like(x))
    v = (rec.batches[1].reshape(2, 3, d) - x.unsqueeze(1)) / MU
    torch.testing.assert_close(
        v.norm(dim=-1), torch.full((2, 3), d**0.5, dtype=F64), rtol=1e-8, atol=0
    )


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_samples": 1}, "num_samples"),
        ({"num_samples": 6, "pilot_samples": 0}, "pilot_samples"),
        ({"num_samples": 6, "pilot_samples": 6}, "pilot_samples"),
        ({"num_samples": 6, "pilot_samples": 2.5}, "pilot_samples"),
        ({"direction": "cube"}, "direction"),
        ({"combine": "sum"}, "combine"),
    ],
)
def test_invalid_dap_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_estimator("dap", **kwargs)
