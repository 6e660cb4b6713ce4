"""Rademacher (+-1) random gradient estimate (SPSA)."""

from __future__ import annotations

import torch
from torch import Tensor

from zoattack.estimators.base import RandomDirectionEstimator
from zoattack.estimators.registry import ESTIMATORS


@ESTIMATORS.register(
    "rademacher",
    description="Rademacher +-1 directions (SPSA); forward or central",
    aliases=("spsa",),
    flags={"stateful": False, "random": True},
)
class RademacherEstimator(RandomDirectionEstimator):
    """Simultaneous-perturbation estimator (Spall 1992) with the RGE scaling.

    Update: ``g = 1/K sum_k (f(x+mu u_k) - f(x))/mu u_k`` with ``u_k`` in ``{-1, +1}^d``
    (``E[u u^T] = I``); central variant as for Gaussian. Constant magnitude
    ``||u||^2 = d``, so it attains the minimal second moment ``d ||grad||^2``.

    Defaults: ``num_samples=10``, ``mu=1e-3``, ``difference="forward"``.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``.
    Queries per call and example: ``K+1`` forward (``K`` when ``f(x)`` is supplied), ``2K`` central.
    """

    name = "rademacher"

    def directions(
        self, n: int, k: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> Tensor:
        bits = torch.randint(0, 2, (n, k, d), generator=generator, device=generator.device)
        return bits.to(dtype) * 2 - 1

    def scale(self, d: int) -> float:
        return 1.0

    def coordinate_size(self, d: int) -> float:
        return 1.0
