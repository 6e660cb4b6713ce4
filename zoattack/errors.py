"""Project exceptions. The CLI turns any :class:`ZOAttackError` into one line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZOAttackError(Exception):
    """Base class for errors a user can fix (bad names, budgets, inputs)."""


class QueryBudgetExceeded(ZOAttackError):
    """A call would push at least one example past its query budget; nothing was scored."""

    def __init__(self, examples: list[int], budget: int, needed: list[int]) -> None:
        self.examples = examples
        self.budget = budget
        self.needed = needed
        shown = ", ".join(f"#{e} (would reach {n})" for e, n in zip(examples[:5], needed[:5]))
        more = f" and {len(examples) - 5} more" if len(examples) > 5 else ""
        super().__init__(
            f"query budget of {budget} per example would be exceeded for {shown}{more}; "
            "the call was refused before scoring anything"
        )


class InvalidScoresError(ZOAttackError):
    """The model returned NaN or infinite scores."""


class LabelsOnlyError(ZOAttackError):
    """Scores were asked of a model that only answers top-1 labels."""


class PrecisionError(ZOAttackError, ValueError):
    """A finite-difference probe would be lost to floating-point rounding at the current point."""


class InvalidInputError(ZOAttackError, ValueError):
    """Inputs handed to the black box have the wrong shape, dtype or range."""


class UnknownNameError(ZOAttackError, KeyError):
    """A registry lookup failed; the message lists the closest registered names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        self.kind, self.name, self.close = kind, name, close
        msg = f"unknown {kind} '{name}'; {hint} (see `zoattack list {kind}s`)"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])
