"""The estimator registry; names are exactly the CLI's ``--estimator`` values."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoattack.registry import Registry

if TYPE_CHECKING:
    from zoattack.estimators.base import GradientEstimator

ESTIMATORS: Registry[GradientEstimator] = Registry("estimator")
