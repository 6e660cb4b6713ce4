"""Gradient estimators, one per file, registered under their CLI names."""

from __future__ import annotations

from typing import Any

# Imported in a fixed order so registration (and `zoattack list`) order is stable.
from zoattack.estimators import (  # noqa: F401
    block_sign,
    coordinate,
    dap,
    gaussian,
    lizo,
    prior,
    rademacher,
    sphere,
)
from zoattack.estimators.base import Estimate, GradientEstimator
from zoattack.estimators.registry import ESTIMATORS


def create_estimator(name: str, **kwargs: Any) -> GradientEstimator:
    """Build a registered estimator; None-valued keyword arguments are ignored."""
    return ESTIMATORS.create(name, **kwargs)


def list_estimators(pattern: str | None = None, **flags: Any) -> list[str]:
    return ESTIMATORS.names(pattern, **flags)


__all__ = ["ESTIMATORS", "Estimate", "GradientEstimator", "create_estimator", "list_estimators"]
