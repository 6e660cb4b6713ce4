"""Issue 10 item 6: a batch killed with SIGKILL does not stay "running" forever, and
`zoattack batch --help` shows the plan's table names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from zoattack.batch import ResultStore

OWNER = textwrap.dedent(
    """
    import sys, time
    from zoattack.batch import ResultStore
    from zoattack.jobs.attack import AttackSpec
    store = ResultStore(sys.argv[1])
    with store.exclusive():
        store.register_jobs([("k1", "sign", 0, AttackSpec()), ("k2", "sign", 1, AttackSpec())])
        store.start_job("k1", {"model": "small_cnn"})
        store.begin_batch("plan.toml", "", "local")
        print("ready", flush=True)
        time.sleep(120)
    """
)


def test_killed_batch_is_shown_interrupted_and_resumable(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # Its owner is alive: a report opened now must not steal the running job.
        with ResultStore(tmp_path, create=False) as store:
            assert store.owner_alive()
            assert store.job("k1")["status"] == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with ResultStore(tmp_path, create=False) as store:
        assert not store.owner_alive()
        job = store.job("k1")
        assert job["status"] == "interrupted" and "killed" in job["error"]
        assert store.job("k2")["status"] == "pending"
        assert {r[0] for r in store.conn.execute("SELECT status FROM batches")} == {"interrupted"}
        # A rerun takes it up again like any unfinished job.
        store.start_job("k1", {"model": "small_cnn"})
        assert store.job("k1")["status"] == "running"


def test_reaping_a_read_only_store_is_harmless(tmp_path):
    with ResultStore(tmp_path) as store:
        store.conn.execute("INSERT INTO batches (started_at) VALUES (0)")
    db = tmp_path / "results.sqlite"
    (tmp_path / "results.sqlite-wal").unlink(missing_ok=True)
    db.chmod(0o444)
    try:
        with ResultStore(tmp_path, create=False) as store:
            assert store.reap_orphans() == 0
    finally:
        db.chmod(0o644)


def test_batch_help_shows_the_table_names(zo_cli):
    res = zo_cli("batch", "--help", terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "[defaults], [grid] and/or [[job]]" in text
    assert "the plan's [batch] out" in text


def test_a_damaged_store_is_one_line(tmp_path, zo_cli):
    # Found by the corpus: a NULL norm made `zoattack report` raise KeyError.
    import sqlite3

    from zoattack.jobs.attack import AttackSpec

    with ResultStore(tmp_path) as store:
        store.register_jobs([("k1", "sign", 0, AttackSpec().resolved())])
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        con.execute("UPDATE jobs SET norm=NULL")
    res = zo_cli("report", str(tmp_path), "--no-plots")
    assert res.exit_code == 2 and "jobs.norm" in res.output
