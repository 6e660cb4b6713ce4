"""Attacks on top of the ZO core: the score-based loop (:mod:`.base`), the universal attack,
and the search attacks (``square``, ``sign``) registered beside the update rules."""

from zoattack.attacks import sign, square  # noqa: F401  (registers the search attacks)
from zoattack.attacks.base import AttackObjective, AttackResult, run_attack

# Decision (labels-only) attacks register in their own registry on import.
from zoattack.attacks import hardlabel  # noqa: F401  isort: skip

__all__ = ["AttackObjective", "AttackResult", "run_attack"]
