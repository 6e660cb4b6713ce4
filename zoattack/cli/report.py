"""`zoattack report`: tables and plots from batch results. Being built for issue 6."""

from __future__ import annotations


def report_command() -> None:
    """Report on batch results (not built yet)."""
    raise NotImplementedError
