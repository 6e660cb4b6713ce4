"""Gaussian random gradient estimate (RGE / NES)."""

from __future__ import annotations

import torch
from torch import Tensor

from zoattack.estimators.base import RandomDirectionEstimator
from zoattack.estimators.registry import ESTIMATORS


@ESTIMATORS.register(
    "gaussian",
    description="Gaussian directions u~N(0,I) (RGE/NES); forward or central",
    aliases=("rge", "nes"),
    flags={"stateful": False, "random": True},
)
class GaussianEstimator(RandomDirectionEstimator):
    """Gaussian-smoothing two-point estimator (Nesterov & Spokoiny 2017; NES, Ilyas et al. 2018).

    Update: ``g = 1/K sum_k (f(x+mu u_k) - f(x))/mu u_k``, ``u_k ~ N(0, I)`` (no factor d,
    since ``E[u u^T] = I``); central variant ``(f(x+mu u)-f(x-mu u))/(2mu)``.
    Second moment ``(d+2)||grad||^2`` per sample: the worst of the isotropic families.

    Defaults: ``num_samples=10``, ``mu=1e-3``, ``difference="forward"``.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``.
    Queries per call and example: ``K+1`` forward (``K`` when ``f(x)`` is supplied), ``2K`` central.
    """

    name = "gaussian"

    def directions(
        self, n: int, k: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> Tensor:
        return torch.randn(n, k, d, generator=generator, device=generator.device, dtype=dtype)

    def scale(self, d: int) -> float:
        return 1.0

    def coordinate_size(self, d: int) -> float:
        return 1.0
