"""zoattack: zeroth-order (query-only) adversarial attacks and black-box defense.

The public surface is small: a query-counting :class:`BlackBox`, objectives over it,
gradient estimators and update rules from registries, and :func:`minimize`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from zoattack.blackbox import BlackBox
from zoattack.errors import (
    InvalidScoresError,
    QueryBudgetExceeded,
    UnknownNameError,
    ZOAttackError,
)
from zoattack.estimators import ESTIMATORS, create_estimator, list_estimators
from zoattack.minimize import MinimizeResult, minimize
from zoattack.objective import FunctionObjective, Objective
from zoattack.optim import OPTIMIZERS, create_optimizer, list_optimizers
from zoattack.seeding import make_generator

__all__ = [
    "BlackBox",
    "ESTIMATORS",
    "FunctionObjective",
    "InvalidScoresError",
    "MinimizeResult",
    "OPTIMIZERS",
    "Objective",
    "QueryBudgetExceeded",
    "UnknownNameError",
    "ZOAttackError",
    "__version__",
    "create_estimator",
    "create_optimizer",
    "list_estimators",
    "list_optimizers",
    "make_generator",
    "minimize",
]
