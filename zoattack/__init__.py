"""zoattack: zeroth-order (query-only) adversarial attacks and black-box defense.

The public surface is small: a query-counting :class:`BlackBox`, objectives over it,
gradient estimators and update rules from registries, and :func:`minimize`.
"""

from __future__ import annotations

from zoattack._version import __version__
from zoattack.attacks import AttackResult, run_attack
from zoattack.attacks.universal import run_universal
from zoattack.blackbox import BlackBox
from zoattack.data import load_dataset
from zoattack.errors import (
    InvalidScoresError,
    QueryBudgetExceeded,
    UnknownNameError,
    ZOAttackError,
)
from zoattack.estimators import ESTIMATORS, create_estimator, list_estimators
from zoattack.minimize import MinimizeResult, minimize
from zoattack.models import create_model
from zoattack.objective import FunctionObjective, Objective
from zoattack.optim import OPTIMIZERS, create_optimizer, list_optimizers
from zoattack.seeding import make_generator

# Plug-ins that add model prefixes (remote:, defended:) register on import.
from zoattack import remote as _remote  # noqa: F401  isort: skip
from zoattack import defense as _defense  # noqa: F401  isort: skip

# The one-call API and the adversarial-examples reader load the jobs layer (data, models):
# imported on first use, so `import zoattack` stays as cheap as it was.
_LAZY = {
    "attack": ("zoattack.jobs.api", "attack"),
    "load_adversarial": ("zoattack.adversarial", "load_adversarial"),
    "AdversarialExamples": ("zoattack.adversarial", "AdversarialExamples"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoattack' has no attribute {name!r}")


__all__ = [
    "ESTIMATORS",
    "OPTIMIZERS",
    "AdversarialExamples",
    "AttackResult",
    "BlackBox",
    "FunctionObjective",
    "InvalidScoresError",
    "MinimizeResult",
    "Objective",
    "QueryBudgetExceeded",
    "UnknownNameError",
    "ZOAttackError",
    "__version__",
    "attack",
    "create_estimator",
    "create_model",
    "create_optimizer",
    "list_estimators",
    "list_optimizers",
    "load_adversarial",
    "load_dataset",
    "make_generator",
    "minimize",
    "run_attack",
    "run_universal",
]
