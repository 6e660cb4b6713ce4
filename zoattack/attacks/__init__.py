"""Attacks on top of the ZO core: the score-based loop (:mod:`.base`), the universal attack,
the search attacks (``square``, ``sign``) registered beside the update rules, and the
surrogate attacks (``transfer``, ``gfcs``) registered in ``SURROGATE_ATTACKS``."""

from zoattack.attacks import sign, square  # noqa: F401  (registers the search attacks)
from zoattack.attacks.base import AttackObjective, AttackResult, run_attack

# Decision (labels-only) attacks register in their own registry on import; so do the
# surrogate attacks (they build on base).
from zoattack.attacks import gfcs, hardlabel, transfer  # noqa: F401  isort: skip

__all__ = ["AttackObjective", "AttackResult", "run_attack"]
