"""Hard-label (decision-based) attacks: the black box answers with a label only.

Every attack asks membership questions through a :class:`LabelOracle` (one query each, in
the image's ledger, refused before scoring past the budget) and returns a
:class:`DecisionResult` with the distances reached. ``opt`` runs any core update rule x
estimator on the boundary distance :class:`BoundaryDistance`; ``sign_opt``, ``hsja`` and
``rays`` are the published decision attacks. See docs/HARDLABEL.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.hardlabel import hsja, opt, rays, sign_opt  # noqa: F401  (registration)
from zoattack.attacks.hardlabel.base import DECISION_ATTACKS, DecisionAttack, target_starts
from zoattack.attacks.hardlabel.boundary import BoundaryDistance, line_search
from zoattack.attacks.hardlabel.oracle import DecisionResult, LabelOracle
from zoattack.blackbox import BlackBox


def create_decision_attack(name: str, **kwargs: Any) -> DecisionAttack:
    """Build a registered decision attack; None-valued keyword arguments are ignored."""
    return DECISION_ATTACKS.create(name, **kwargs)


def list_decision_attacks(pattern: str | None = None, **flags: Any) -> list[str]:
    return DECISION_ATTACKS.names(pattern, **flags)


def run_decision_attack(
    name: str,
    blackbox: BlackBox,
    x0: Tensor,
    label: Tensor,
    *,
    generator: torch.Generator,
    norm: str,
    eps: float,
    budget: int,
    options: dict[str, Any] | None = None,
    **run_kwargs: Any,
) -> DecisionResult:
    """``create_decision_attack(name, **options).run(blackbox, x0, label, ...)``."""
    attack = create_decision_attack(name, **(options or {}))
    return attack.run(
        blackbox, x0, label, generator=generator, norm=norm, eps=eps, budget=budget, **run_kwargs
    )


__all__ = [
    "DECISION_ATTACKS",
    "BoundaryDistance",
    "DecisionAttack",
    "DecisionResult",
    "LabelOracle",
    "create_decision_attack",
    "line_search",
    "list_decision_attacks",
    "run_decision_attack",
    "target_starts",
]
