"""Coordinate-wise gradient estimate (CGE; ZOO, DeepZero)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from zoattack.estimators.base import (
    Estimate,
    GradientEstimator,
    check_mu_resolvable,
    query_pairs,
    query_with_base,
)
from zoattack.estimators.registry import ESTIMATORS
from zoattack.objective import Objective

# Candidates are built in blocks of coordinates so that a full CGE on a large input never
# materialises (N, d, d) at once; each block is still one batched objective call.
_BLOCK_ELEMENTS = 1 << 24


@ESTIMATORS.register(
    "coordinate",
    description="coordinate-wise differences (CGE/ZOO); all or q random coords",
    aliases=("cge", "zoo"),
    flags={"stateful": False, "random": False},
)
class CoordinateEstimator(GradientEstimator):
    """Coordinate-wise estimator (Chen et al. 2017 ZOO; Chen et al. 2024 DeepZero).

    Update: ``g = c * sum_{i in S} (f(x+mu e_i) - f(x))/mu e_i`` (forward) or
    ``(f(x+mu e_i) - f(x-mu e_i))/(2mu)`` (central). ``S`` is every coordinate when
    ``num_samples`` is None or ``>= d`` (``c = 1``, deterministic, bias ``O(mu)``), else
    ``q = num_samples`` distinct coordinates drawn per example per call (ZO-SCD, ``c = d/q``).

    Defaults: ``num_samples=None`` (all coordinates), ``mu=5e-3`` (DeepZero), forward.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``.
    Queries per call and example: ``|S|+1`` forward (``|S|`` when ``f(x)`` is supplied),
    ``2|S|`` central.
    """

    name = "coordinate"
    num_samples_optional: ClassVar[bool] = True

    def __init__(
        self, *, num_samples: int | None = None, mu: float = 5e-3, difference: str = "forward"
    ) -> None:
        super().__init__(
            num_samples=1 if num_samples is None else num_samples, mu=mu, difference=difference
        )
        self.subset = None if num_samples is None else self.num_samples

    def _coords(self, d: int) -> int:
        return d if self.subset is None or self.subset >= d else self.subset

    def queries_per_call(self, dim: int) -> int:
        q = self._coords(dim)
        return q + 1 if self.difference == "forward" else 2 * q

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
        q = self._coords(d)
        check_mu_resolvable(x, self.mu, self.mu, x.dtype)
        if q == d:
            coords = torch.arange(d, device=x.device).expand(n, d)
            scale = 1.0
        else:
            keys = torch.rand(n, d, generator=generator, device=generator.device)
            coords = keys.argsort(dim=1)[:, :q]
            scale = d / q
        grad = torch.zeros_like(x)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        f0 = fx
        block = max(1, _BLOCK_ELEMENTS // max(1, n * d))
        for start in range(0, q, block):
            c = coords[:, start : start + block]
            disp = torch.zeros(n, c.shape[1], d, dtype=x.dtype, device=x.device)
            disp.scatter_(2, c.unsqueeze(2), self.mu)
            if self.difference == "forward":
                f0, vals, _, qn = query_with_base(
                    objective, x, disp, shape, idx, f0, need_actual=False, consume=True
                )
                diffs = (vals - f0.unsqueeze(1)) / self.mu
            else:
                fp, fm, qn = query_pairs(objective, x, disp, shape, idx)
                diffs = (fp - fm) / (2 * self.mu)
            grad.scatter_(1, c, diffs.to(x.dtype) * scale)
            queries += qn
        loss = f0 if not bool(torch.isnan(f0).any()) else None
        return Estimate(grad=grad, loss=loss, queries=queries)
