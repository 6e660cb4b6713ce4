"""Summaries of attack results (the CLI's table, --json, benchmarks)."""

from __future__ import annotations

from typing import Any

from zoattack.attacks.base import AttackResult
from zoattack.jobs.attack import CSV_FIELDS, rows_of, summarize_rows

__all__ = ["CSV_FIELDS", "summarize", "summarize_rows"]


def summarize(result: AttackResult, *, wall_seconds: float, total_queries: int) -> dict[str, Any]:
    """:func:`summarize_rows` of one in-memory result."""
    return summarize_rows(
        rows_of(result, 0), wall_seconds=wall_seconds, scored_inputs=total_queries
    )
