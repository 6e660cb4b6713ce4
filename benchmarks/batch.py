#!/usr/bin/env python
"""Batch benchmark: local executor vs Ray with 2 workers on one fixed plan, and the result
store's insert rate.

What it measures (every figure comes from this run):

* Wall time of ``run_batch`` on a fixed plan of small jobs (the bundled small_cnn on
  Fashion-MNIST; 8 jobs = 4 rules x 2 seeds, 40 images each, 300 queries, chunks of 10
  images, so 32 chunks), three ways, each into a fresh store:
    - local executor, torch's default intra-op threads;
    - local executor, 1 thread (on tiny batches usually the faster local setting);
    - Ray executor on a local Ray with ``--workers`` CPUs (1 thread per task). ``ray.init``
      is timed separately and not included, as on an existing cluster; starting the worker
      processes (importing torch and zoattack) is included.
  The speed-up is the faster local time over the Ray time (target >= 1.7x with 2 workers).
  Ray's rows must equal the 1-thread local rows (checked); rows computed with another
  thread count can differ (rounding), and the benchmark says how many did.
* Store insert rate: synthetic rows written as a batch writes them, one transaction per
  chunk (rows + the job's counters, WAL, synchronous=FULL), for chunks of 500 and of 50
  rows (target >= 10,000 rows/s), plus the rate of reading them back for a report.

Usage: ``python benchmarks/batch.py [--workers 2] [--no-ray] [--quick] [--scale N]
[--no-default-threads] [--no-store]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PLAN = """
[defaults]
model = "small_cnn"
dataset = "fashion-mnist"
images = {images}
budget = {budget}
chunk_size = 10
device = "cpu"

[grid]
optimizer = ["sign", "zo_signsgd", "zo_adamm"]
seed = [0, 1]

[[job]]
norm = "l2"
optimizer = "square"
seed = 0

[[job]]
norm = "l2"
optimizer = "square"
seed = 1
"""


def _timed_batch(plan, folder: Path, executor) -> tuple[float, list[dict]]:
    from zoattack.batch import ResultStore, run_batch

    with ResultStore(folder) as store:
        t0 = time.perf_counter()
        outcome = run_batch(plan, store, executor)
        wall = time.perf_counter() - t0
        assert not outcome.failed, outcome.failed
        return wall, store.rows()


def bench_executors(
    tmp: Path, workers: int, use_ray: bool, quick: bool, scale: int, default_threads_run: bool
) -> list[tuple]:
    import torch

    from zoattack.batch import LocalExecutor, RayExecutor, load_plan

    plan_path = tmp / "plan.toml"
    plan_path.write_text(
        PLAN.format(images=(20 if quick else 40) * scale, budget=150 if quick else 300)
    )
    plan = load_plan(plan_path)
    chunks = sum(len(range(0, j.spec.images, j.spec.chunk_size)) for j in plan.jobs)
    print(
        f"plan: {len(plan.jobs)} jobs, {chunks} chunks, "
        f"{sum(j.spec.images for j in plan.jobs)} images",
        file=sys.stderr,
    )
    results = []
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_one, rows_ref = _timed_batch(plan, tmp / "local-1", LocalExecutor())
    torch.set_num_threads(default_threads)
    results.append(("local, 1 torch thread", t_one, None))
    best_local = t_one
    if default_threads_run and default_threads != 1:
        t_default, rows_default = _timed_batch(plan, tmp / "local-default", LocalExecutor())
        results.append((f"local, {default_threads} torch threads", t_default, None))
        best_local = min(t_default, t_one)
        # Different intra-op thread counts round convolutions differently, and a rounding
        # difference can change an attack's path: count the rows it changed.
        differ = sum(a != b for a, b in zip(rows_default, rows_ref))
        print(
            f"rows differing between {default_threads} and 1 torch threads: {differ} of "
            f"{len(rows_ref)}",
            file=sys.stderr,
        )
    if use_ray:
        try:
            import ray
        except ImportError:
            print(
                "ray is not installed (pip install 'zoattack[ray]'): Ray not measured",
                file=sys.stderr,
            )
            return results
        t0 = time.perf_counter()
        ray.init(
            num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        t_init = time.perf_counter() - t0
        try:
            t_ray, rows = _timed_batch(plan, tmp / "ray", RayExecutor())
        finally:
            ray.shutdown()
        assert rows == rows_ref, "Ray rows differ from the 1-thread local rows"
        results.append(
            (
                f"ray, {workers} workers (ray.init {t_init:.1f} s not included)",
                t_ray,
                best_local / t_ray,
            )
        )
        results.append(
            (
                f"ray, {workers} workers, ray.init included",
                t_ray + t_init,
                best_local / (t_ray + t_init),
            )
        )
    return results


def bench_store(tmp: Path, quick: bool) -> list[tuple]:
    from zoattack.batch import ResultStore
    from zoattack.batch.report import Results
    from zoattack.jobs.attack import AttackSpec

    jobs = 20 if quick else 100
    per_job = 1000
    spec = AttackSpec(images=per_job, budget=1000).resolved()
    out = []
    for chunk in (500, 50):
        folder = tmp / f"store-{chunk}"
        with ResultStore(folder) as store:
            keys = [f"job{j:04d}" for j in range(jobs)]
            store.register_jobs((k, "sign", i, spec) for i, k in enumerate(keys))
            for k in keys:
                store.start_job(k, {"images": per_job, "zoattack": "x", "torch": "y"})
            t0 = time.perf_counter()
            for k in keys:
                for start in range(0, per_job, chunk):
                    rows = [
                        dict(
                            index=i,
                            label=i % 10,
                            initial_prediction=i % 10,
                            final_prediction=(i + 1) % 10,
                            success=1,
                            queries=i % 997 + 1,
                            linf=0.1,
                            l2=1.2345,
                            stop_reason="success",
                        )
                        for i in range(start, start + chunk)
                    ]
                    store.add_rows(k, rows, scored_inputs=chunk * 100, seconds=0.1)
            wall = time.perf_counter() - t0
            n = jobs * per_job
            assert store.conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == n
            assert all(j["status"] == "finished" for j in store.jobs())
        out.append((f"insert, {chunk} rows per transaction", n / wall, n, wall))
        if chunk == 500:
            t0 = time.perf_counter()
            res = Results(folder)
            res.summaries()
            wall = time.perf_counter() - t0
            out.append(("read + summarize for a report", n / wall, n, wall))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="measure the local executor only")
    ap.add_argument("--quick", action="store_true", help="a smaller plan and store")
    ap.add_argument(
        "--scale",
        type=int,
        default=1,
        help="multiply the images per job (amortizes Ray's worker start-up)",
    )
    ap.add_argument(
        "--no-default-threads",
        action="store_true",
        help="skip the local run with torch's default thread count",
    )
    ap.add_argument("--no-store", action="store_true", help="skip the store measurement")
    args = ap.parse_args()

    from _common import metadata
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Provenance first: timings mean little without the command, versions and machine load.
    meta = metadata()
    console.print(f"command: {meta['command_line']}", highlight=False)
    console.print(
        ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f", load average {meta['machine']['load_average']}",
        highlight=False,
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = [] if args.no_store else bench_store(tmp, args.quick)
        table = Table(title="result store (SQLite, WAL, synchronous=FULL)")
        for col in ("operation", "rows", "seconds", "rows/s", "vs 10,000 rows/s"):
            table.add_column(col, justify="left" if col == "operation" else "right")
        for name, rate, n, wall in store:
            table.add_row(name, f"{n:,}", f"{wall:.2f}", f"{rate:,.0f}", f"{rate / 1e4:.1f}x")
        if store:
            console.print(table)
        execs = bench_executors(
            tmp, args.workers, not args.no_ray, args.quick, args.scale, not args.no_default_threads
        )
        table = Table(title=f"fixed plan, wall time (cpu cores: {os.cpu_count()})")
        for col in ("executor", "seconds", "speed-up vs best local"):
            table.add_column(col, justify="left" if col == "executor" else "right")
        for name, wall, ratio in execs:
            table.add_row(name, f"{wall:.1f}", "-" if ratio is None else f"{ratio:.2f}x")
        console.print(table)
        console.print("rows identical: Ray (1 thread per task) = local with 1 torch thread")


if __name__ == "__main__":
    main()
