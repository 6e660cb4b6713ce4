"""Summaries, tables, exports and figures from a batch result store (`zoattack report`).

Every number comes from the stored per-image rows through
:func:`zoattack.results.rows.summarize_rows`, the same function `zoattack run` reports with, so a
job's line here equals what `zoattack run` prints for the same settings.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from zoattack.batch.store import ResultStore
from zoattack.results import figures
from zoattack.results.figures import job_order as _order
from zoattack.results.rows import CSV_FIELDS, summarize_rows

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
)


class Results:
    """Jobs and rows of a store, read once."""

    def __init__(self, results: str | Path) -> None:
        with ResultStore(results, create=False) as store:
            self.path = store.path
            self.jobs = store.jobs()
            rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in store.rows():
                rows[r.pop("job")].append(r)
        self.rows = dict(rows)
        if not self.jobs:
            raise ValueError(
                f"{self.path} holds no jobs yet; run `zoattack batch PLAN.toml "
                f"--out {self.path.parent}` first"
            )

    def summaries(self) -> list[dict[str, Any]]:
        """One line per job: its settings and the summary of its stored rows, sorted by
        model, optimizer and the other settings."""
        out = []
        for job in self.jobs:
            rows: list[Mapping[str, Any]] = list(self.rows.get(job["key"], []))
            s = summarize_rows(
                rows, wall_seconds=job["seconds"] or 0.0, scored_inputs=job["scored_inputs"] or 0
            )
            line = {k: job.get(k) for k in SETTING_KEYS}
            line.update({k: s.get(k) for k in METRIC_KEYS if k in s})
            line.update(
                status=job["status"],
                stored=len(rows),
                scored_inputs=job["scored_inputs"],
                seconds=round(job["seconds"] or 0.0, 3),
                median_distortion_success=s[f"median_{job['norm']}_success"],
                images_text=f"{len(rows)}/{job['images']}",
            )
            out.append(line)
        return sorted(out, key=_order)

    def groups(self) -> list[dict[str, Any]]:
        """Rows pooled over the jobs that differ only in seed (and other unlisted settings)."""
        pooled: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for job in self.jobs:
            pooled[tuple(job[k] for k in GROUP_KEYS)].append(job)
        out = []
        for values, jobs in pooled.items():
            rows: list[Mapping[str, Any]] = [r for j in jobs for r in self.rows.get(j["key"], [])]
            s = summarize_rows(rows, wall_seconds=0.0, scored_inputs=0)
            line = dict(zip(GROUP_KEYS, values, strict=True))
            line.update(
                {
                    k: s[k]
                    for k in (
                        "initially_correct",
                        "successes",
                        "success_rate",
                        "mean_queries_success",
                        "median_queries_success",
                    )
                }
            )
            line.update(
                jobs=len(jobs),
                seeds=len({j["seed"] for j in jobs}),
                median_distortion_success=s[f"median_{line['norm']}_success"],
            )
            out.append(line)
        return sorted(out, key=_order)


def save_success_curves(path: Path, results: Results) -> Path:
    """Success rate within q queries, one curve per optimizer, one panel per model and eps."""
    return figures.save_success_curves(path, results.jobs, results.rows)


def save_query_histograms(path: Path, results: Results, bins: int = 20) -> Path:
    """Queries spent on successful images, one outline per optimizer, one panel per model/eps."""
    return figures.save_query_histograms(path, results.jobs, results.rows, bins=bins)


def _fmt(value: Any, key: str = "") -> str:
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
        values = {_fmt(line.get(key), key) for line in lines}
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
    columns, caption = (
        _compact(COLUMNS, summaries, ("label", "success_rate")) if compact else (list(COLUMNS), "")
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
        table.add_row(*(_fmt(line.get(key), key) for _, key in columns), style=style)
    return table


def group_table(groups: Sequence[Mapping[str, Any]], title: str = "pooled over seeds") -> Table:
    columns, caption = _compact(GROUP_COLUMNS, groups, ("label", "success_rate"))
    table = Table(title=title, caption=caption or None)
    for header, key in columns:
        table.add_column(header, justify="left" if key in _LEFT else "right")
    last = None
    for line in groups:
        if last is not None and line["model"] != last:
            table.add_section()
        last = line["model"]
        table.add_row(*(_fmt(line.get(key), key) for _, key in columns))
    return table


def _markdown_table(columns: Sequence[tuple[str, str]], lines: Iterable[Mapping[str, Any]]) -> str:
    right = [key not in _LEFT for _, key in columns]
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    body = [
        "| " + " | ".join(_fmt(line.get(k), k).replace("|", "\\|") for _, k in columns) + " |"
        for line in lines
    ]
    return "\n".join([head, rule, *body])


def to_markdown(results: Results) -> str:
    counting = (
        "one query = one input scored by the model; success is over initially-correct "
        "images; queries and distortion are over successful images"
    )
    parts = [
        f"# Batch results: {results.path}",
        "",
        f"{len(results.jobs)} jobs; {counting}.",
        "",
        "## Jobs",
        "",
        _markdown_table(COLUMNS, results.summaries()),
    ]
    groups = results.groups()
    if any(g["jobs"] > 1 for g in groups):
        parts += ["", "## Pooled over seeds", "", _markdown_table(GROUP_COLUMNS, groups)]
    return "\n".join(parts) + "\n"


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


def write_rows_csv(path: Path, results: Results) -> Path:
    """Every stored row, with the job's key and main settings in front."""

    front = ("key", "model", "dataset", "label", "norm", "eps", "budget", "seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        # the job's "label" (its optimizer) would clash with the row's true class "label"
        writer.writerow([*("optimizer" if k == "label" else k for k in front), *CSV_FIELDS])
        for job in sorted(results.jobs, key=_order):
            for r in results.rows.get(job["key"], []):
                writer.writerow([job[k] for k in front] + [r[k] for k in CSV_FIELDS])
    return path
