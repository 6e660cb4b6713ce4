"""The progress line of `zoattack run`: how is it going, not just how many queries.

Images finished and fooled, the success rate so far (over finished, initially-correct
images), queries spent of the budget, and the time left; for hard-label attacks the median
distance reached so far (finished images). On stderr, and only when both stdout and stderr
are terminals and no --json was asked for: piped, logged or machine-read output stays clean.
"""

from __future__ import annotations

import math
import statistics
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def interactive(as_json: bool) -> bool:
    """Whether a live progress display may be drawn."""
    return not as_json and sys.stdout.isatty() and sys.stderr.isatty()


class RunProgress:
    """Counts fed by the run's callbacks (``start``, ``queries``, ``rows``, ``live``) and the
    line they make (:meth:`status`)."""

    def __init__(self, console: Console, *, images: int, enabled: bool) -> None:
        self.images = images
        self.finished = self.fooled = self.attacked = 0
        self.live: dict[int, dict[str, int]] = {}
        self.distances: list[float] = []
        self.decision_norm: str | None = None
        self.budget_total = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task = self.progress.add_task("", total=None, visible=False, status="")

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def stop(self) -> None:
        self.progress.stop()

    # -- callbacks ---------------------------------------------------------------------
    def start(self, label: str, total_queries: int, decision_norm: str | None = None) -> None:
        self.budget_total = total_queries
        self.decision_norm = decision_norm
        self.progress.update(
            self.task, description=label, total=total_queries, visible=True, status=self.status()
        )

    def queries(self, q: int) -> None:
        self.spent = q
        self.progress.update(self.task, completed=q, status=self.status())

    def rows(self, rows: list[dict[str, Any]]) -> None:
        self.live.clear()  # chunks run one after the other: the live one just ended
        for r in rows:
            self.finished += 1
            if r["stop_reason"] == "misclassified":
                continue
            self.attacked += 1
            self.fooled += int(r["success"])
            if self.decision_norm is not None:
                self.distances.append(float(r[self.decision_norm]))
        self.progress.update(self.task, status=self.status())

    def on_live(self, chunk: int, counts: dict[str, int]) -> None:
        self.live = {chunk: counts}
        self.progress.update(self.task, status=self.status())

    # -- the line -----------------------------------------------------------------------
    spent = 0

    def status(self) -> str:
        live = next(iter(self.live.values()), {})
        finished = self.finished + live.get("finished", 0)
        fooled = self.fooled + live.get("fooled", 0)
        attacked = self.attacked + live.get("attacked", 0)
        parts = [f"{finished}/{self.images} images", f"{fooled} fooled"]
        if attacked:
            parts.append(f"success {fooled / attacked:.0%}")
        if self.budget_total:
            parts.append(f"{self.spent:,}/{self.budget_total:,} queries")
        if self.decision_norm is not None and self.distances:
            med = statistics.median(self.distances)
            shown = f"{med:.3g}" if math.isfinite(med) else "none found"
            parts.append(f"median {self.decision_norm} {shown}")
        return " · ".join(parts)
