"""`zoattack batch PLAN.toml`: run a plan of attacks into a resumable SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoattack.cli._common import EXIT_INTERRUPTED, P_RAY, P_RUN, err, guarded, out

# As `zoattack run`: a failed job or Ctrl-C stops part-way; finished images are stored and
# rerunning the same command continues (exit 3 for both).
EXIT_INCOMPLETE = EXIT_INTERRUPTED


class RichReporter:
    """One bar for the whole batch (images stored) and one for the current job."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.overall = progress.add_task("batch", total=None)
        self.current = progress.add_task("", total=None, visible=False)
        self.jobs_total = 0
        self.ordinal: dict[str, int] = {}

    def batch_started(self, works: list[Any]) -> None:
        self.jobs_total = len(works)
        self.progress.update(
            self.overall,
            total=sum(w.todo for w in works),
            description=f"batch: {self.jobs_total} jobs, images",
        )

    def job_started(self, job: Any, total: int, unit: str) -> None:
        n = self.ordinal.setdefault(job.key, len(self.ordinal) + 1)
        s = job.spec
        what = (
            f"job {n}/{self.jobs_total} {job.label} {s.model} {s.norm} eps={s.eps:g} "
            f"seed={s.seed}, {unit}"
        )
        self.progress.update(
            self.current, description=escape(what), total=total, completed=0, visible=True
        )

    def job_progress(self, job: Any, completed: int) -> None:
        self.progress.update(self.current, completed=completed)

    def rows_stored(self, job: Any, count: int) -> None:
        self.progress.advance(self.overall, count)


def _job_listing(plan: Any, store_path: Path) -> Table:
    from zoattack.batch.plan import adopt_stored_keys, varying_settings
    from zoattack.batch.store import ResultStore

    stored: dict[str, int] = {}
    status: dict[str, str] = {}
    if store_path.is_file():
        with ResultStore(store_path, readonly=True) as store:
            stored = store.row_counts()
            status = {j["key"]: j["status"] for j in store.jobs()}
        plan = adopt_stored_keys(plan, status)  # jobs stored under an earlier key scheme
    shown = varying_settings(plan.jobs) or ["model", "optimizer", "norm", "eps"]
    shown = [k for k in shown if k != "optimizer"]
    table = Table(title=f"{plan.name}: {len(plan.jobs)} jobs")
    for col in ("#", "key", "optimizer", *shown, "from", "stored"):
        table.add_column(col, justify="right" if col in ("#", "stored") else "left")
    for job in plan.jobs:
        s = job.spec
        state = status.get(job.key)
        done = stored.get(job.key, 0)
        mark = "finished" if state == "finished" else f"{done}/{s.images}" if state else "new"
        table.add_row(
            str(job.position + 1),
            job.key,
            job.label,
            *(str(getattr(s, k)) for k in shown),
            job.origin.rsplit("/", 1)[-1],
            mark,
        )
    return table


@guarded
def batch_command(
    plan_file: Annotated[
        Path,
        typer.Argument(
            metavar="PLAN.toml",
            # Rich markup would swallow the table names; escape them.
            help=escape(
                "The plan: [defaults], [grid] and/or [[job]] tables with the options of "
                "`zoattack run` (see examples/plan.toml)."
            ),
        ),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=escape(
                "Results folder (holds results.sqlite); default: the plan's [batch] out, "
                "else runs/<plan name>, both under the current folder."
            ),
            rich_help_panel=P_RUN,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate the plan and list its jobs (and what is stored); run nothing.",
            rich_help_panel=P_RUN,
        ),
    ] = False,
    executor: Annotated[
        str, typer.Option(help="local (this process) or ray.", rich_help_panel=P_RUN)
    ] = "local",
    device: Annotated[
        str | None,
        typer.Option(
            help="auto, cpu or cuda for every job "
            "(overrides the plan); with ray, cuda asks for "
            "a GPU per task.",
            rich_help_panel=P_RUN,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join (e.g. ray://HOST:10001); default: start a local Ray.",
            rich_help_panel=P_RAY,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="CPUs of the local Ray (default: all).", rich_help_panel=P_RAY),
    ] = None,
    max_retries: Annotated[
        int, typer.Option(help="Retries of a task whose worker died.", rich_help_panel=P_RAY)
    ] = 3,
) -> None:
    """Run a plan of attacks into a resumable result store (rerun to continue)."""
    from zoattack.batch.executors import EXECUTORS, make_executor
    from zoattack.batch.plan import adopt_stored_keys, load_plan
    from zoattack.batch.runner import run_batch
    from zoattack.batch.store import DB_NAME, ResultStore

    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be {' or '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and (workers is not None or address is not None):
        raise ValueError("--workers and --address are for --executor ray")
    overrides = {"device": device} if device is not None else None
    # Ray workers may have devices this machine lacks: only a local run checks them here.
    plan = load_plan(plan_file, overrides=overrides, check_device=executor == "local")
    folder = out_dir or plan.out or Path("runs") / plan.path.stem
    db_path = folder / DB_NAME
    if plan.duplicates:
        err.print(f"[dim]{plan.duplicates} duplicate jobs (same settings) dropped[/]")
    if dry_run:
        out.print(_job_listing(plan, db_path))
        out.print(f"would write to {db_path} with --executor {executor}")
        return
    runner_executor = make_executor(
        executor, address=address, workers=workers, max_retries=max_retries
    )
    store = ResultStore(folder)
    # Jobs a store holds under an earlier key scheme keep that key (also in the results table).
    plan = adopt_stored_keys(plan, store.job_keys())
    try:
        with store.exclusive():
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=err, transient=True) as progress:
                try:
                    outcome = run_batch(
                        plan, store, runner_executor, reporter=RichReporter(progress)
                    )
                except KeyboardInterrupt:
                    progress.stop()
                    err.print(
                        f"[bold red]interrupted:[/] finished chunks are stored in "
                        f"{escape(str(store.path))}; rerun the same command to continue",
                        highlight=False,
                        soft_wrap=True,
                    )
                    raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        store.close()
    _print_results(plan, store.path)
    out.print(
        f"{outcome.jobs} jobs: {outcome.skipped} already finished, {outcome.finished} "
        f"finished now, {len(outcome.failed)} failed; {outcome.new_rows:,} new rows in "
        f"{outcome.seconds:.1f} s -> {store.path} (see `zoattack report {folder}`)"
    )
    if outcome.failed:
        key, why = next(iter(outcome.failed.items()))
        more = f" (and {len(outcome.failed) - 1} more)" if len(outcome.failed) > 1 else ""
        err.print(
            f"[bold red]error:[/] job {key} failed: {escape(why)}{more}; its finished "
            "images are stored, rerun the same command to retry",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INCOMPLETE)


def _print_results(plan: Any, db_path: Path) -> None:
    from zoattack.batch.report import Results, job_table

    keys = {j.key for j in plan.jobs}
    lines = [s for s in Results(db_path).summaries() if s["key"] in keys]
    out.print(job_table(lines, title=f"{plan.name}: results"))
