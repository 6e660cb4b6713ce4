"""Rich tables and JSON documents of run summaries (what `zoattack run` prints)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

# The metrics `zoattack run` shows for a per-image attack (the rest are in --json/summary.json).
RUN_KEYS = (
    "initially_correct",
    "successes",
    "success_rate",
    "mean_queries_success",
    "median_queries_success",
    "mean_queries_all",
    "median_linf_success",
    "median_l2_success",
    "wall_seconds",
    "scored_inputs_per_second",
)


def format_value(val: Any) -> str:
    if val is None:
        return "-"
    if isinstance(val, bool):
        return str(val)
    if isinstance(val, float):
        return f"{val:,.4g}"
    if isinstance(val, int):
        return f"{val:,}"
    return str(val)


def summary_table(title: str, summary: Mapping[str, Any], keys: Sequence[str]) -> Table:
    """Two columns, metric and value, for ``keys`` of ``summary`` (absent ones shown as -)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        table.add_row(key.replace("_", " "), format_value(summary.get(key)))
    return table


def summary_json(settings: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The one-line JSON document of `--json`: ``{"settings": ..., "summary": ...}``."""
    return json.dumps({"settings": dict(settings), "summary": dict(summary)}, default=str)
