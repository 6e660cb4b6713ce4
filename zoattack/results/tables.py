"""Rich tables, Markdown, CSV and JSON of summaries: one run (`zoattack run`) or many jobs
(`zoattack batch` / `zoattack report`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
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
# ... and for a hard-label (decision) attack: distances reached, queries to reach eps.
DECISION_RUN_KEYS = (
    "initially_correct",
    "successes",
    "success_rate",
    "median_distance_at_budget",
    "median_queries_success",
    "mean_queries_success",
    "mean_queries_all",
    "median_linf_success",
    "median_l2_success",
    "no_start",
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
    """Two columns, metric and value, for ``keys`` of ``summary`` (absent ones shown as -).
    Rates show as percents, as in `zoattack batch` and `report` (fractions stay in --json)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        value = summary.get(key)
        text = fmt(value, key) if key == "success_rate" else format_value(value)
        table.add_row(key.replace("_", " "), text)
    return table


def summary_json(settings: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The one-line JSON document of `--json`: ``{"settings": ..., "summary": ...}``."""
    return json.dumps({"settings": dict(settings), "summary": dict(summary)}, default=str)


# -- many jobs: one line each (`zoattack batch`, `zoattack report`) -------------------------

SETTING_KEYS = (
    "key",
    "model",
    "dataset",
    "label",
    "optimizer",
    "estimator",
    "norm",
    "eps",
    "budget",
    "seed",
    "target",
    "loss",
    "lr",
    "subspace",
    "images",
)
METRIC_KEYS = (
    "status",
    "stored",
    "initially_correct",
    "successes",
    "success_rate",
    "mean_queries_success",
    "median_queries_success",
    "mean_queries_all",
    "median_distortion_success",
    "median_distance_at_budget",
    "median_linf_success",
    "median_l2_success",
    "scored_inputs",
    "seconds",
)
GROUP_KEYS = ("model", "dataset", "label", "norm", "eps", "budget")
# (header, key) of the terminal and Markdown tables.
COLUMNS = (
    ("model", "model"),
    ("optimizer", "label"),
    ("norm", "norm"),
    ("eps", "eps"),
    ("budget", "budget"),
    ("seed", "seed"),
    ("images", "images_text"),
    ("status", "status"),
    ("success", "success_rate"),
    ("mean q", "mean_queries_success"),
    ("median q", "median_queries_success"),
    ("median dist", "median_distortion_success"),
    ("dist@budget", "median_distance_at_budget"),
    ("scored", "scored_inputs"),
    ("seconds", "seconds"),
)
GROUP_COLUMNS = (
    ("model", "model"),
    ("optimizer", "label"),
    ("norm", "norm"),
    ("eps", "eps"),
    ("budget", "budget"),
    ("jobs", "jobs"),
    ("seeds", "seeds"),
    ("attacked", "initially_correct"),
    ("success", "success_rate"),
    ("mean q", "mean_queries_success"),
    ("median q", "median_queries_success"),
    ("median dist", "median_distortion_success"),
    ("dist@budget", "median_distance_at_budget"),
)
# Shown only when some line has a value (hard-label jobs): score-only tables stay as they were.
OPTIONAL_COLUMNS = ("median_distance_at_budget",)


def present_columns(
    columns: Sequence[tuple[str, str]], lines: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    return [
        (h, k)
        for h, k in columns
        if k not in OPTIONAL_COLUMNS or any(line.get(k) is not None for line in lines)
    ]


def fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key == "success_rate":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _compact(
    columns: Sequence[tuple[str, str]], lines: Sequence[Mapping[str, Any]], keep: tuple[str, ...]
) -> tuple[list[tuple[str, str]], str]:
    """Columns whose value is the same on every line move to a caption (narrow terminals)."""
    shown, fixed = [], []
    for header, key in columns:
        values = {fmt(line.get(key), key) for line in lines}
        if len(lines) > 1 and len(values) == 1 and key not in keep:
            fixed.append(f"{header} {values.pop()}")
        else:
            shown.append((header, key))
    return shown, ", ".join(fixed)


_LEFT = ("model", "label", "norm", "status")


def job_table(
    summaries: Sequence[Mapping[str, Any]], title: str = "jobs", *, compact: bool = True
) -> Table:
    """Rich table, one section per (model, optimizer) group."""
    present = present_columns(COLUMNS, summaries)
    columns, caption = (
        _compact(present, summaries, ("label", "success_rate")) if compact else (present, "")
    )
    table = Table(title=title, caption=caption or None)
    for header, key in columns:
        table.add_column(header, justify="left" if key in _LEFT else "right")
    last = None
    for line in summaries:
        group = (line["model"], line["label"])
        if last is not None and group != last:
            table.add_section()
        last = group
        style = {"failed": "red", "running": "yellow", "pending": "dim"}.get(line["status"])
        table.add_row(*(fmt(line.get(key), key) for _, key in columns), style=style)
    return table


def group_table(groups: Sequence[Mapping[str, Any]], title: str = "pooled over seeds") -> Table:
    columns, caption = _compact(
        present_columns(GROUP_COLUMNS, groups), groups, ("label", "success_rate")
    )
    table = Table(title=title, caption=caption or None)
    for header, key in columns:
        table.add_column(header, justify="left" if key in _LEFT else "right")
    last = None
    for line in groups:
        if last is not None and line["model"] != last:
            table.add_section()
        last = line["model"]
        table.add_row(*(fmt(line.get(key), key) for _, key in columns))
    return table


def markdown_table(columns: Sequence[tuple[str, str]], lines: Iterable[Mapping[str, Any]]) -> str:
    right = [key not in _LEFT for _, key in columns]
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    body = [
        "| " + " | ".join(fmt(line.get(k), k).replace("|", "\\|") for _, k in columns) + " |"
        for line in lines
    ]
    return "\n".join([head, rule, *body])


def write_csv(path: Path, summaries: Sequence[Mapping[str, Any]]) -> Path:
    """One line per job: settings then metrics (raw values, empty for none)."""
    fields = [*SETTING_KEYS, *METRIC_KEYS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(
            {k: ("" if line.get(k) is None else line.get(k)) for k in fields} for line in summaries
        )
    return path
