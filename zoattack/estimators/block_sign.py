"""Block-sign finite differences on a coarse-to-fine block hierarchy (SignHunter's view)."""

from __future__ import annotations

import torch
from torch import Tensor

from zoattack.estimators.base import (
    Estimate,
    StatefulEstimator,
    check_mu_resolvable,
    query_with_base,
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
        lo, hi = (j * d) // c, ((j + 1) * d) // c
        pos = (torch.arange(d, device=dev) - offset.unsqueeze(1)) % d  # (n, d)
        inside = (pos.unsqueeze(1) >= lo.unsqueeze(2)) & (pos.unsqueeze(1) < hi.unsqueeze(2))
        perm = self._permutation(shape, dev)
        mask = torch.zeros_like(inside)
        mask[:, :, perm] = inside
        flip = torch.where(x > 0, -1.0, 1.0).to(x.dtype)
        dirs = mask.to(x.dtype) * flip.unsqueeze(1)  # (n, k, d)
        f0, vals, actual, q = query_with_base(objective, x, self.mu * dirs, shape, idx, fx)
        size = mask.sum(dim=2).clamp_min(1).double()
        lengths = self.mu * size.sqrt()
        b = (vals - f0.unsqueeze(1)) / lengths
        u = actual.double() / lengths.unsqueeze(2)
        gram = u @ u.transpose(1, 2)
        coef = torch.linalg.pinv(gram, hermitian=True) @ b.unsqueeze(2)
        grad = (u.transpose(1, 2) @ coef).squeeze(2).to(x.dtype)
        self.state.set("cursor", idx, cursor + k)
        self.state.set("offset", idx, offset)
        self.state.set("pass", idx, now)
        return Estimate(grad=grad, loss=f0, queries=q)
