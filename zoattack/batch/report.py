"""Reading a batch result store for `zoattack report`: per-job and pooled summaries.

Every number comes from the stored per-image rows through
:func:`zoattack.results.rows.summarize_rows`, the same function `zoattack run` reports with, so
a job's line here equals what `zoattack run` prints for the same settings. The tables, exports
and figures drawn from them live in :mod:`zoattack.results` (re-exported here).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoattack.batch.store import ResultStore
from zoattack.results import figures
from zoattack.results.figures import job_order as _order
from zoattack.results.rows import CSV_FIELDS, summarize_rows
from zoattack.results.tables import (  # noqa: F401  (the report's tables live in results)
    COLUMNS,
    GROUP_COLUMNS,
    GROUP_KEYS,
    METRIC_KEYS,
    SETTING_KEYS,
    group_table,
    job_table,
    markdown_table,
    present_columns,
    write_csv,
)


def _decision_norm(job: Mapping[str, Any]) -> str | None:
    """The norm of a hard-label job (its rows' distances are what it minimised), else None."""
    try:
        spec = json.loads(job.get("spec") or "{}")
    except (TypeError, ValueError):
        return None
    return str(job["norm"]) if isinstance(spec, dict) and spec.get("attack") else None


class Results:
    """Jobs and rows of a store, read once."""

    def __init__(self, results: str | Path) -> None:
        with ResultStore(results, readonly=True) as store:
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
                rows,
                wall_seconds=job["seconds"] or 0.0,
                scored_inputs=job["scored_inputs"] or 0,
                decision_norm=_decision_norm(job),
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
            s = summarize_rows(
                rows, wall_seconds=0.0, scored_inputs=0, decision_norm=_decision_norm(jobs[0])
            )
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
            line["median_distance_at_budget"] = s.get("median_distance_at_budget")
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
        markdown_table(present_columns(COLUMNS, lines := results.summaries()), lines),
    ]
    groups = results.groups()
    if any(g["jobs"] > 1 for g in groups):
        parts += [
            "",
            "## Pooled over seeds",
            "",
            markdown_table(present_columns(GROUP_COLUMNS, groups), groups),
        ]
    return "\n".join(parts) + "\n"


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
