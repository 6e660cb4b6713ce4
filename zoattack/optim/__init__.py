"""Update rules (batched, registry-driven) and their torch.optim faces.

``zoattack.optim.LIZO`` / ``R_AdaZO`` / ``ZO_SGD`` / ``ZO_SignSGD`` / ``ZO_AdaMM`` subclass
``torch.optim.Optimizer`` and take ``step(closure)``, so the ReLIZO and R-AdaZO README
snippets run unchanged. ``sign`` (SignHunter) and ``square`` (Square Attack) are
estimator-free search rules (:class:`SearchRule`, registry flag ``search``) for attacks.
"""

from __future__ import annotations

from typing import Any

from zoattack.optim import lizo, radazo, zo_adamm, zo_sgd, zo_signsgd  # noqa: F401
from zoattack.optim.base import SearchRule, StepResult, ZORule
from zoattack.optim.lizo import LIZO
from zoattack.optim.radazo import R_AdaZO
from zoattack.optim.registry import OPTIMIZERS
from zoattack.optim.torch_face import ZOOptimizer
from zoattack.optim.zo_adamm import ZO_AdaMM
from zoattack.optim.zo_sgd import ZO_SGD
from zoattack.optim.zo_signsgd import ZO_SignSGD


def create_optimizer(name: str, **kwargs: Any) -> ZORule:
    """Build a registered update rule; None-valued keyword arguments are ignored."""
    return OPTIMIZERS.create(name, **kwargs)


def list_optimizers(pattern: str | None = None, **flags: Any) -> list[str]:
    return OPTIMIZERS.names(pattern, **flags)


__all__ = [
    "LIZO",
    "OPTIMIZERS",
    "ZO_SGD",
    "R_AdaZO",
    "SearchRule",
    "StepResult",
    "ZOOptimizer",
    "ZORule",
    "ZO_AdaMM",
    "ZO_SignSGD",
    "create_optimizer",
    "list_optimizers",
]
