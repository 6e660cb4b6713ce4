"""Uniform-on-the-unit-sphere random gradient estimate (ZO-SGD/ZO-AdaMM's RGE)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoattack.estimators.base import RandomDirectionEstimator
from zoattack.estimators.registry import ESTIMATORS


@ESTIMATORS.register(
    "sphere",
    description="unit-sphere directions with factor d (RGE of ZO-AdaMM/ZO-signSGD)",
    aliases=("uniform", "rge_sphere"),
    flags={"stateful": False, "random": True},
)
class SphereEstimator(RandomDirectionEstimator):
    """Sphere-smoothing two-point estimator (Liu et al. 2018; ZO-AdaMM, Chen et al. 2019).

    Update: ``g = d/K sum_k (f(x+mu u_k) - f(x))/mu u_k``, ``u_k`` uniform on the unit
    sphere (``E[u u^T] = I/d``, hence the factor d); central variant as for Gaussian.
    ``mu`` is the probe *radius* here, so each coordinate moves by about ``mu/sqrt(d)``.
    Second moment ``d ||grad||^2`` per sample (constant magnitude: minimal variance).

    Defaults: ``num_samples=10``, ``mu=1e-3``, ``difference="forward"``.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``.
    Queries per call and example: ``K+1`` forward (``K`` when ``f(x)`` is supplied), ``2K`` central.
    """

    name = "sphere"

    def directions(
        self, n: int, k: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> Tensor:
        z = torch.randn(n, k, d, generator=generator, device=generator.device, dtype=dtype)
        return z / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)

    def scale(self, d: int) -> float:
        return float(d)

    def coordinate_size(self, d: int) -> float:
        return 1.0 / math.sqrt(d)
