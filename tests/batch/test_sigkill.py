"""A real `zoattack batch` process killed with SIGKILL mid-run, twice, then started again:
the store ends with exactly the rows of an uninterrupted run, none lost, none duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from zoattack.batch import LocalExecutor, ResultStore, load_plan, run_batch

GRID = """
[grid]
optimizer = ["sign", "zo_signsgd", "zo_adamm"]
seed = [0, 1]
images = 12
"""


def _stored_rows(db) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


def _batch(plan, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "zoattack", "batch", str(plan), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_after(proc, db, rows: int, timeout: float = 120.0) -> int:
    t0 = time.monotonic()
    while _stored_rows(db) < rows:
        if proc.poll() is not None:
            pytest.fail(f"batch ended before it could be killed:\n{proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("batch made no progress")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return _stored_rows(db)


def test_sigkill_at_any_moment_loses_and_duplicates_nothing(tmp_path, tiny):
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(tiny + GRID)
    plan = load_plan(plan_path)
    total = 12 * len(plan.jobs)
    out = tmp_path / "killed"
    db = out / "results.sqlite"

    first = _kill_after(_batch(plan_path, out), db, rows=10)
    second = _kill_after(_batch(plan_path, out), db, rows=first + 14)
    assert 0 < first < second < total

    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = {r[0] for r in con.execute("SELECT status FROM batches")}
    # Both were killed before they could record an end; the second run, finding the first
    # one's lock free, marked it interrupted.
    assert statuses == {"interrupted", "running"}

    done = subprocess.run(
        [sys.executable, "-m", "zoattack", "batch", str(plan_path), "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    with ResultStore(tmp_path / "straight") as ref_store:
        run_batch(plan, ref_store, LocalExecutor())
        reference = ref_store.rows()
    with ResultStore(out, create=False) as store:
        assert store.rows() == reference
        assert len(reference) == total
        assert {j["status"] for j in store.jobs()} == {"finished"}
        dup = store.conn.execute(
            'SELECT COUNT(*) FROM (SELECT job, "index" FROM rows '
            'GROUP BY job, "index" HAVING COUNT(*) > 1)'
        ).fetchone()[0]
        assert dup == 0
