"""Batches of attacks: plan files, a resumable SQLite result store, executors, reports."""

from __future__ import annotations

from zoattack.batch.executors import LocalExecutor, RayExecutor, Work, make_executor
from zoattack.batch.plan import Plan, PlanJob, job_key, load_plan
from zoattack.batch.runner import BatchOutcome, run_batch
from zoattack.batch.store import DB_NAME, ResultStore

__all__ = [
    "DB_NAME",
    "BatchOutcome",
    "LocalExecutor",
    "Plan",
    "PlanJob",
    "RayExecutor",
    "ResultStore",
    "Work",
    "job_key",
    "load_plan",
    "make_executor",
    "run_batch",
]
