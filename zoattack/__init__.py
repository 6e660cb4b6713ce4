"""zoattack: zeroth-order (query-only) adversarial attacks and black-box defense.

The public surface is small: a query-counting :class:`BlackBox`, objectives over it,
gradient estimators and update rules from registries, and :func:`minimize`.

Names load on first use (PEP 562): ``import zoattack`` and the command line's ``--help`` do not
pay for importing torch. A new public name goes in ``_EXPORTS`` (and ``__all__``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from zoattack._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "AttackResult": "zoattack.attacks",
    # The one-call API and the adversarial-examples reader (they load the jobs layer).
    "attack": "zoattack.jobs.api",
    "load_adversarial": "zoattack.adversarial",
    "AdversarialExamples": "zoattack.adversarial",
    "run_attack": "zoattack.attacks",
    "run_universal": "zoattack.attacks.universal",
    "BlackBox": "zoattack.blackbox",
    "load_dataset": "zoattack.data",
    "InvalidScoresError": "zoattack.errors",
    "QueryBudgetExceeded": "zoattack.errors",
    "UnknownNameError": "zoattack.errors",
    "ZOAttackError": "zoattack.errors",
    "ESTIMATORS": "zoattack.estimators",
    "create_estimator": "zoattack.estimators",
    "list_estimators": "zoattack.estimators",
    "MinimizeResult": "zoattack.minimize",
    "minimize": "zoattack.minimize",
    "create_model": "zoattack.models",
    "FunctionObjective": "zoattack.objective",
    "Objective": "zoattack.objective",
    "OPTIMIZERS": "zoattack.optim",
    "create_optimizer": "zoattack.optim",
    "list_optimizers": "zoattack.optim",
    "make_generator": "zoattack.seeding",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoattack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """``zoattack.minimize`` is both a submodule and the function it defines. Importing the
    submodule sets the package attribute to the module; the public name keeps the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
    from zoattack.adversarial import AdversarialExamples, load_adversarial
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
    from zoattack.jobs.api import attack
    from zoattack.minimize import MinimizeResult, minimize
    from zoattack.models import create_model
    from zoattack.objective import FunctionObjective, Objective
    from zoattack.optim import OPTIMIZERS, create_optimizer, list_optimizers
    from zoattack.seeding import make_generator

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
