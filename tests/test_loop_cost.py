"""The cheaper forms of the attack loop's hot paths (issue 16) against the dense or
step-by-step forms they replace: same probes, same estimates, same draws, same images."""

from __future__ import annotations

import pytest
import torch

import zoattack.attacks.square as square_mod
from zoattack import BlackBox, FunctionObjective, make_generator
from zoattack.attacks.square import SquareRule, _redraw_serial
from zoattack.estimators.block_sign import BlockSignEstimator
from zoattack.norms import project, to_image
from zoattack.optim.base import draw_signs

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def nested_intervals(n: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k = 5 intervals per row, as block_sign makes them: level 0, then halves, quarters."""
    lo, hi = [], []
    for _ in range(n):
        bounds = [(0, d), (0, d // 2), (d // 2, d), (0, d // 4), (d // 4, d // 2)]
        perm = torch.randperm(5, generator=gen).tolist()
        lo.append([bounds[i][0] for i in perm])
        hi.append([bounds[i][1] for i in perm])
    return torch.tensor(lo), torch.tensor(hi)


def test_interval_gram_and_sums_match_dense_masks():
    gen = torch.Generator().manual_seed(0)
    n, d = 3, 37
    rot = torch.stack([torch.randperm(d, generator=gen) for _ in range(n)]).int()
    lo, hi = nested_intervals(n, d, gen)
    w = torch.rand(n, d, generator=gen, dtype=F64)
    mask = ((rot.unsqueeze(1) >= lo.unsqueeze(2)) & (rot.unsqueeze(1) < hi.unsqueeze(2))).double()
    dense = (mask * w.unsqueeze(1)) @ mask.transpose(1, 2)
    torch.testing.assert_close(BlockSignEstimator._interval_gram(w, rot, lo, hi), dense)
    coef = torch.randn(n, 5, generator=gen, dtype=F64)
    sums = BlockSignEstimator._interval_sums_at(coef, rot, lo, hi)
    torch.testing.assert_close(sums, (coef.unsqueeze(2) * mask).sum(1))
    # Outside every block: exactly zero (a sign rule must see 0, not rounding residue).
    lo_out, hi_out = torch.tensor([[0, 2]]), torch.tensor([[1, 3]])
    one = torch.tensor([[1e8, 1.0 / 3]], dtype=F64)
    sums = BlockSignEstimator._interval_sums_at(
        one, torch.arange(4).int().view(1, 4), lo_out, hi_out
    )
    assert sums[0, 1] == 0 and sums[0, 3] == 0


def dense_block_sign(est: BlockSignEstimator, x, fvals, f0, shape, offset, cursor):
    """The estimator's formula with explicit (n, k, d) masks and a float64 Gram product."""
    n, d = x.shape
    k = est.num_samples
    counts = torch.tensor(est._levels(d))
    cycle = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    block = (cursor.unsqueeze(1) + torch.arange(k)) % cycle
    level = torch.searchsorted(starts, block, right=True) - 1
    c = counts[level]
    j = block - starts[level]
    lo, hi = (j * d) // c, ((j + 1) * d) // c
    pos = (torch.arange(d) - offset.unsqueeze(1)) % d
    inside = (pos.unsqueeze(1) >= lo.unsqueeze(2)) & (pos.unsqueeze(1) < hi.unsqueeze(2))
    mask = torch.zeros_like(inside)
    mask[:, :, est._permutation(torch.Size(shape), x.device)] = inside
    flip = torch.where(x > 0, -1.0, 1.0)
    pts = x.unsqueeze(1) + est.mu * (mask.float() * flip.unsqueeze(1))
    actual = (pts - x.unsqueeze(1)).double()
    lengths = est.mu * mask.sum(2).clamp_min(1).double().sqrt()
    u = actual / lengths.unsqueeze(2)
    b = (fvals - f0.unsqueeze(1)) / lengths
    coef = torch.linalg.pinv(u @ u.transpose(1, 2), hermitian=True) @ b.unsqueeze(2)
    return pts, (u.transpose(1, 2) @ coef).squeeze(2).float()


def test_block_sign_probes_and_estimate_match_the_dense_formula():
    shape = (3, 5, 6)
    d = 90
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(d, generator=gen, dtype=F64)
    seen = []

    def fn(z):
        seen.append(z.clone())
        return torch.sin(z.flatten(1).double() @ w)

    obj = FunctionObjective(BlackBox(fn, output="scores", bounds=None))
    est = BlockSignEstimator()
    x = (torch.rand(4, *shape, generator=gen) - 0.5) * 0.2
    x[0, 0, 0, 0] = 0.0
    g = make_generator(3)
    for _ in range(12):  # crosses levels, so calls mix nested and disjoint blocks
        cursor = est.state.get("cursor", torch.arange(4), (), dtype=torch.int64, device=x.device)
        fx = fn(x)
        seen.clear()
        out = est.estimate(obj, x, generator=g, fx=fx)
        offset = est.state.tensors["offset"][:4]
        flat = x.reshape(4, d)
        fvals = fn(seen[0]).view(4, -1)
        pts, grad = dense_block_sign(est, flat, fvals, fx, shape, offset, cursor)
        assert torch.equal(seen[0].reshape(pts.shape), pts)
        torch.testing.assert_close(out.grad.reshape(4, d), grad, rtol=1e-6, atol=1e-7)
        assert torch.equal(out.grad.reshape(4, d) == 0, grad == 0)
        x = (x - 0.01 * out.grad).clamp(-0.1, 0.1)


def loop_redraw(code, signs, redraw, generator):
    """Square's redraws as a per-try loop (the reference the pooled replay must equal)."""
    m, c = code.shape
    rows = redraw.nonzero().flatten()
    for _ in range(square_mod.RESAMPLE_TRIES):
        if not rows.numel():
            break
        signs[rows] = draw_signs((rows.numel(), c, 1, 1), generator, signs.device, signs.dtype)
        rows = rows[(code[rows] == signs[rows].view(-1, c)).all(dim=1)]
    else:
        signs[rows] = -signs[rows]


@pytest.mark.parametrize("tries", [0, 1, 16])
@pytest.mark.parametrize("c", [1, 3])
def test_pooled_redraws_equal_the_loop(monkeypatch, tries, c):
    monkeypatch.setattr(square_mod, "RESAMPLE_TRIES", tries)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        m = 9
        code = torch.randint(-1, 2, (m, c), generator=g).float()
        signs = draw_signs((m, c, 1, 1), g, torch.device("cpu"), torch.float32)
        redraw = (code == signs.view(m, c)).all(dim=1)
        a, b = signs.clone(), signs.clone()
        ga, gb = make_generator(seed), make_generator(seed)
        loop_redraw(code, a, redraw.clone(), ga)
        _redraw_serial(code, b, redraw.clone(), gb)
        assert torch.equal(a, b)
        assert torch.equal(ga.get_state(), gb.get_state())


def test_square_linf_move_changes_every_window():
    """With 1-pixel windows on one channel half the first draws need a redraw; every
    candidate must still differ from delta (the resample guarantee)."""
    rule = SquareRule(lr=0.05, budget=100)
    g = make_generator(0)
    delta = 0.05 * draw_signs((64, 1, 6, 6), g, torch.device("cpu"), torch.float32)
    cand = rule._move_linf(delta, torch.full((64,), 99), g)
    assert bool(((cand != delta).flatten(1).sum(1) == 1).all())
    assert bool((cand.abs() == 0.05).all())


def test_to_image_broadcasts_clean_rows_per_group():
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 2, 4, 4, generator=gen)
    delta = torch.randn(12, 2, 4, 4, generator=gen) * 0.2
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        want = (x0.repeat_interleave(4, 0) + project(delta, norm, eps)).clamp(0, 1)
        assert torch.equal(to_image(x0, delta, norm, eps), want)
        assert torch.equal(to_image(x0.repeat_interleave(4, 0), delta, norm, eps), want)
