"""The batch driver: pending work from the store, chunks from an executor, rows into the store.

Only this loop writes the database. Each :class:`~zoattack.batch.executors.ChunkResult` is
committed (rows and counters in one transaction) before the executor is asked for the next one,
so whatever stops the driver, every chunk it reported is stored and nothing is stored twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zoattack.batch.executors import (
    LocalExecutor,
    QuietReporter,
    RayExecutor,
    Reporter,
    Work,
)
from zoattack.batch.plan import Plan, PlanJob, adopt_stored_keys
from zoattack.batch.store import ResultStore


@dataclass
class BatchOutcome:
    jobs: int = 0
    skipped: int = 0  # finished before this batch started
    finished: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    new_rows: int = 0
    seconds: float = 0.0
    interrupted: bool = False


def pending_work(plan: Plan, store: ResultStore) -> tuple[list[Work], int]:
    """Unfinished jobs of ``plan`` with their stored indices, and how many are finished."""
    works, finished = [], 0
    for job in plan.jobs:
        rec = store.job(job.key)
        if rec is not None and rec["status"] == "finished":
            finished += 1
            continue
        works.append(Work(job, frozenset(store.done_indices(job.key))))
    return works, finished


def run_batch(
    plan: Plan,
    store: ResultStore,
    executor: LocalExecutor | RayExecutor,
    *,
    reporter: Reporter | None = None,
    on_job_done: Callable[[PlanJob, dict[str, Any]], None] | None = None,
) -> BatchOutcome:
    """Run every unfinished job of ``plan`` into ``store``; resumable at any point.

    A job whose model fails is marked ``failed`` (its finished images kept) and the batch goes
    on; KeyboardInterrupt stops it after storing what was reported. Jobs the store holds
    under an earlier key scheme keep that key (:func:`~zoattack.batch.plan.adopt_stored_keys`).
    """
    t0 = time.perf_counter()
    plan = adopt_stored_keys(plan, store.job_keys())
    store.register_jobs((j.key, j.label, j.position, j.spec) for j in plan.jobs)
    works, skipped = pending_work(plan, store)
    outcome = BatchOutcome(jobs=len(plan.jobs), skipped=skipped)
    reporter = reporter or QuietReporter()
    reporter.batch_started(works)
    by_key: dict[str, PlanJob] = {w.job.key: w.job for w in works}
    started: set[str] = set()
    batch_id = store.begin_batch(str(plan.path), plan.text, executor.name)
    status = "failed"
    try:
        for res in executor.execute(works, reporter):
            if res.settings is not None and res.key not in started:
                store.start_job(res.key, res.settings)
                started.add(res.key)
            if res.rows or res.scored_inputs:
                added = store.add_rows(
                    res.key, res.rows, scored_inputs=res.scored_inputs, seconds=res.seconds
                )
                outcome.new_rows += added
                if res.key in by_key:
                    reporter.rows_stored(by_key[res.key], added)
            if res.error is not None and res.key not in outcome.failed:
                store.fail_job(res.key, res.error)
                outcome.failed[res.key] = res.error
            rec = store.job(res.key)
            if rec is not None and rec["status"] == "finished" and res.key in by_key:
                outcome.finished += 1
                if on_job_done is not None:
                    on_job_done(by_key[res.key], rec)
                del by_key[res.key]
        status = "failed" if outcome.failed else "finished"
    except KeyboardInterrupt:
        outcome.interrupted = True
        status = "interrupted"
        raise
    finally:
        if isinstance(executor, RayExecutor):
            executor.shutdown()
        store.end_batch(batch_id, status)
        outcome.seconds = time.perf_counter() - t0
    return outcome
