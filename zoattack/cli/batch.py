"""`zoattack batch`: run a plan of attacks into a resumable store. Being built for issue 6."""

from __future__ import annotations


def batch_command() -> None:
    """Run a plan of attacks (not built yet)."""
    raise NotImplementedError

