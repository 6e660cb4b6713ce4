"""Block-sign finite differences on a coarse-to-fine block hierarchy (SignHunter's view)."""

from __future__ import annotations

import torch
from torch import Tensor

from zoattack.estimators.base import (
    Estimate,
    StatefulEstimator,
    check_mu_resolvable,
    query_points,
)
from zoattack.estimators.registry import ESTIMATORS
from zoattack.objective import Objective

BLOCK_ORDERS = ("column", "row")


@ESTIMATORS.register(
    "block_sign",
    description="forward differences along sign-flip directions of hierarchical "
    "blocks (SignHunter's view)",
    aliases=("signhunter_fd",),
    flags={"stateful": True, "random": True},
)
class BlockSignEstimator(StatefulEstimator):
    """Directional derivatives along block sign-flips, refined coarse to fine
    (after Al-Dujaili & O'Reilly, SignHunter, ICLR 2020).

    Method: the coordinates are put in a fixed order (``order="column"``: per channel, column
    by column, i.e. vertical stripes; ``"row"``: plain flattening), cyclically shifted by a
    random offset drawn once per pass. Level ``h`` splits that order into ``min(2^h, d)``
    contiguous blocks; the blocks are visited level by level, and after the single-coordinate
    level the next pass starts again at one block. Each call measures the next ``K`` blocks
    ``B`` of the example's pass along ``s_B``, the flip direction on ``B``:
    ``s_i = -sign(x_i)`` (``+1`` where ``x_i = 0``, so a start at the origin probes towards
    ``+mu``). At a vertex of an Linf ball of radius ``mu/2`` a probe is exactly SignHunter's
    block flip.

    Estimate: with unit rows ``u_B = s_B / sqrt|B|``, probe lengths ``r_B = mu sqrt|B|`` and
    ``b_B = (f(x + mu s_B) - f(x)) / r_B``, the minimum-norm solution of ``U g = b``
    (``g = U^T pinv(U U^T) b``, float64). Within one level the blocks are disjoint and this is
    ``g_i = (f(x + mu s_B) - f(x)) / (mu |B|) * s_i``: the mean partial derivative on the block.
    It is the gradient projected onto the probed blocks, not an unbiased estimate of it; a
    pass that reaches single coordinates spans everything. Only forward differences: the
    opposite probe ``x - mu s_B`` would push a vertex further out and be clipped to ``x``.

    Defaults: ``num_samples=10`` (blocks per call), ``mu=0.2`` (twice the default Linf eps
    0.1 of the attacks, i.e. a full flip), ``order="column"``.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``; with ``shape = (C, H, W)`` (or any
    rank >= 2) "column" orders by ``(C..., W, H)``. State per example: ``cursor`` (blocks
    measured), ``offset`` and ``pass`` (the current pass's shift).
    Queries per call and example: ``K + 1`` (``K`` when ``f(x)`` is supplied).
    """

    name = "block_sign"
    supports_central = False

    def __init__(
        self,
        *,
        num_samples: int = 10,
        mu: float = 0.2,
        difference: str = "forward",
        order: str = "column",
    ) -> None:
        super().__init__(num_samples=num_samples, mu=mu, difference=difference)
        if order not in BLOCK_ORDERS:
            raise ValueError(f"order must be 'column' or 'row', got {order!r}")
        self.order = order

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, mu={self.mu:g}, "
            f"order={self.order!r})"
        )

    def queries_per_call(self, dim: int) -> int:
        return self.num_samples + 1

    def _permutation(self, shape: torch.Size, device: torch.device) -> Tensor:
        """Position in the visiting order -> flat coordinate."""
        d = int(torch.Size(shape).numel())
        ids = torch.arange(d, device=device)
        if self.order == "row" or len(shape) < 2:
            return ids
        return ids.reshape(shape).transpose(-1, -2).reshape(-1)

    def _shifted_positions(self, shape: torch.Size, offset: Tensor, device: torch.device) -> Tensor:
        """``(order_position(i) - offset) % d`` for every flat coordinate ``i``: ``(n, d)``
        int32. Coordinate ``perm[p]`` sits at shifted position ``(p - offset) % d``."""
        d = int(torch.Size(shape).numel())
        key = (tuple(shape), str(device))
        cache = self.__dict__.setdefault("_position_cache", {})
        if key not in cache:
            perm = self._permutation(shape, device)
            place = torch.empty_like(perm)
            place[perm] = torch.arange(d, device=device)
            cache.clear()
            cache[key] = place.to(torch.int32)
        place = cache[key]
        rot = place.unsqueeze(0) - offset.to(torch.int32).unsqueeze(1)
        return rot.add_(d).remainder_(d)

    @staticmethod
    def _interval_gram(weights: Tensor, rot: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """``G[n, p, q]`` = sum of ``weights[n, i]`` over coordinates whose shifted position
        lies in both ``[lo_p, hi_p)`` and ``[lo_q, hi_q)``: ``(n, k, k)`` float64."""
        n, d = weights.shape
        ordered = torch.zeros(n, d + 1, dtype=weights.dtype, device=weights.device)
        ordered[:, 1:].scatter_(1, rot.long(), weights)
        prefix = ordered.cumsum_(1)
        start = torch.maximum(lo.unsqueeze(2), lo.unsqueeze(1)).view(n, -1)
        stop = torch.minimum(hi.unsqueeze(2), hi.unsqueeze(1)).view(n, -1)
        sums = prefix.gather(1, stop.clamp_min(start)) - prefix.gather(1, start)
        k = lo.shape[1]
        return torch.where(stop > start, sums, 0.0).view(n, k, k)

    @staticmethod
    def _interval_sums_at(w: Tensor, rot: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """Per coordinate, the sum of ``w[n, p]`` over blocks ``p`` containing its shifted
        position: ``(n, d)`` float64, exactly 0 outside every block."""
        n, d = rot.shape
        diff = torch.zeros(n, d + 1, dtype=w.dtype, device=w.device)
        diff.scatter_add_(1, lo, w).scatter_add_(1, hi, -w)
        cover = torch.zeros(n, d + 1, dtype=torch.int32, device=w.device)
        one = torch.ones_like(lo, dtype=torch.int32)
        cover.scatter_add_(1, lo, one).scatter_add_(1, hi, -one)
        # Counted in integers, so coordinates outside every block get an exact 0 rather
        # than the rounding left when a running float sum subtracts a block's weight.
        at = torch.where(cover.cumsum_(1)[:, :d] > 0, diff.cumsum_(1)[:, :d], 0.0)
        return at.gather(1, rot.long())

    @staticmethod
    def _levels(d: int) -> list[int]:
        counts, c = [], 1
        while True:
            counts.append(min(c, d))
            if c >= d:
                return counts
            c *= 2

    def _estimate(
        self,
        objective: Objective,
        x: Tensor,
        shape: torch.Size,
        generator: torch.Generator,
        idx: Tensor,
        fx: Tensor,
    ) -> Estimate:
        n, d = x.shape
        k = self.num_samples
        dev = x.device
        check_mu_resolvable(x, self.mu, self.mu, x.dtype)
        counts = torch.tensor(self._levels(d), device=dev)
        cycle = int(counts.sum())
        starts = torch.cumsum(counts, 0) - counts  # first block id of each level
        cursor = self.state.get("cursor", idx, (), dtype=torch.int64, device=dev)
        offset = self.state.get("offset", idx, (), dtype=torch.int64, device=dev)
        seen = self.state.get("pass", idx, (), dtype=torch.int64, device=dev, fill=-1)
        # One shift per pass keeps a level's blocks disjoint and the hierarchy nested.
        now = cursor // cycle
        fresh = now != seen
        draw = torch.randint(0, d, (n,), generator=generator, device=generator.device).to(dev)
        offset = torch.where(fresh, draw, offset)
        block = (cursor.unsqueeze(1) + torch.arange(k, device=dev)) % cycle  # (n, k)
        level = torch.searchsorted(starts, block, right=True) - 1
        c = counts[level]
        j = block - starts[level]
        lo, hi = (j * d) // c, ((j + 1) * d) // c  # block = shifted positions [lo, hi)
        # Shifted position of every coordinate, (n, d); int32 halves the traffic of the
        # (n, k, d) comparisons below (d < 2**31).
        rot = self._shifted_positions(shape, offset, dev)
        mask = rot.unsqueeze(1) >= lo.to(rot.dtype).unsqueeze(2)
        mask &= rot.unsqueeze(1) < hi.to(rot.dtype).unsqueeze(2)
        flip = torch.where(x > 0, -1.0, 1.0).to(x.dtype)
        # A probe moves its block to x + mu s and leaves the rest at x: the same points as
        # x + mu * (mask * s), built in one pass with no (n, k, d) direction tensor.
        moved = x + self.mu * flip  # (n, d)
        probes = torch.where(mask, moved.unsqueeze(1), x.unsqueeze(1))
        f0, vals, q = query_points(objective, x, probes, shape, idx, fx)
        del probes
        size = (hi - lo).clamp_min(1).double()
        lengths = self.mu * size.sqrt()
        b = (vals - f0.unsqueeze(1)) / lengths
        # The minimum-norm solution g = U^T pinv(U U^T) b with unit rows u_B = a 1_B / |B|^.5
        # (a = the displacement actually applied, moved - x after rounding). Blocks of one
        # call share the shift, so any two are nested or disjoint intervals of shifted
        # positions: U U^T and U^T w follow from interval sums of a^2 and of w, in (n, d)
        # work instead of (n, k, d) float64 products.
        a = (moved - x).double()
        gram = self._interval_gram(a * a, rot, lo, hi) / (
            lengths.unsqueeze(2) * lengths.unsqueeze(1)
        )
        coef = (torch.linalg.pinv(gram, hermitian=True) @ b.unsqueeze(2)).squeeze(2)
        grad = (a * self._interval_sums_at(coef / lengths, rot, lo, hi)).to(x.dtype)
        self.state.set("cursor", idx, cursor + k)
        self.state.set("offset", idx, offset)
        self.state.set("pass", idx, now)
        return Estimate(grad=grad, loss=f0, queries=q)
