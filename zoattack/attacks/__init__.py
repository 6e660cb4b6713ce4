"""Score-based attacks on top of the ZO core (the loop, its objective and results)."""

from zoattack.attacks.base import AttackObjective, AttackResult, run_attack

__all__ = ["AttackObjective", "AttackResult", "run_attack"]
