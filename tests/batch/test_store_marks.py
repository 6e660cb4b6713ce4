"""Stores that are not ours (issue 24 item 5): our stores carry SQLite's application_id and a
schema version; another program's database or a newer store is refused before anything is
written, an unmarked store of ours (written before the marks) is recognised by its exact tables
and marked on its first write, and `zoattack report` opens stores read-only."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zoattack.batch import ResultStore
from zoattack.batch.store import APPLICATION_ID, SCHEMA_VERSION
from zoattack.cli.main import app
from zoattack.jobs.attack import AttackSpec


def fingerprint(db: Path, *, wal: bool = False) -> tuple[str, list[str]]:
    """The file's bytes and the files beside it: a switch to WAL leaves -wal/-shm files. (A
    reader of a store already in WAL mode makes them too, which writes nothing of the store.)"""
    beside = [] if wal else sorted(p.name for p in db.parent.iterdir())
    return hashlib.sha256(db.read_bytes()).hexdigest(), beside


def pragma(db: Path, name: str) -> object:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def one_store(folder: Path, *, rows: int = 1) -> Path:
    """A store with one job and ``rows`` stored rows (of 2 images)."""
    with ResultStore(folder) as store:
        store.register_jobs([("k1", "sign", 0, AttackSpec(images=2).resolved())])
        store.start_job("k1", {"images": 2})
        row = {
            "label": 1,
            "initial_prediction": 1,
            "final_prediction": 2,
            "success": 1,
            "queries": 9,
            "linf": 0.1,
            "l2": 1.0,
            "stop_reason": "success",
            "queries_to_eps": 9,
        }
        store.add_rows("k1", [{**row, "index": i} for i in range(rows)])
    return folder / "results.sqlite"


def unmark(db: Path, *, drop_added: bool = False) -> None:
    """Make a store as zoattack wrote it before the marks (and, optionally, before the row
    columns added since): the schema is otherwise the same."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA application_id=0")
    conn.execute("PRAGMA user_version=0")
    if drop_added:
        conn.execute("ALTER TABLE rows DROP COLUMN queries_to_eps")
    conn.commit()
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()


def test_a_new_store_is_marked(tmp_path):
    db = one_store(tmp_path)
    assert pragma(db, "application_id") == APPLICATION_ID
    assert pragma(db, "user_version") == SCHEMA_VERSION
    assert pragma(db, "journal_mode") == "wal"


def test_batch_refuses_an_unrelated_sqlite_file_before_writing(tmp_path, plan_file):
    (tmp_path / "theirs").mkdir()
    other = tmp_path / "theirs" / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    conn.execute("INSERT INTO users VALUES (1, 'ann')")
    conn.commit()
    conn.close()
    before = fingerprint(other)
    code, output = cli(
        "batch", str(plan_file("[grid]\noptimizer = ['sign']\n")), "--out", str(other)
    )
    assert code == 2 and "not a zoattack result store" in output and "users" in output
    assert len(output.strip().splitlines()) == 1, output
    assert fingerprint(other) == before
    assert pragma(other, "journal_mode") == "delete"


def test_another_programs_marked_database_is_refused(tmp_path):
    other = tmp_path / "theirs.db"
    conn = sqlite3.connect(other)
    conn.execute("PRAGMA application_id=1234")
    conn.commit()  # an empty database, but marked as theirs
    conn.close()
    before = fingerprint(other)
    with pytest.raises(ValueError, match="another program's SQLite database"):
        ResultStore(other)
    assert fingerprint(other) == before


@pytest.mark.parametrize("readonly", [False, True])
def test_a_store_of_a_newer_schema_is_refused_before_writing(tmp_path, readonly):
    db = one_store(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = fingerprint(db, wal=True)
    with pytest.raises(ValueError, match="newer zoattack"):
        ResultStore(tmp_path, readonly=readonly)
    assert fingerprint(db, wal=True) == before


def test_tables_named_like_ours_with_other_columns_are_refused_untouched(tmp_path):
    db = tmp_path / "results.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (name TEXT, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema', '1')")
    conn.execute("CREATE TABLE jobs (key TEXT, what TEXT)")
    conn.execute("CREATE TABLE rows (job TEXT, x REAL)")
    conn.commit()
    conn.close()
    before = fingerprint(db)
    for readonly in (True, False):
        with pytest.raises(ValueError, match="its jobs table has other columns") as info:
            ResultStore(tmp_path, readonly=readonly)
        assert "no jobs/rows" not in str(info.value)
    code, output = cli("report", str(tmp_path), "--no-plots")
    assert code == 2 and "other columns" in output and "no jobs/rows" not in output
    assert fingerprint(db) == before  # no ALTER TABLE, no WAL


def test_a_store_without_meta_says_what_is_missing(tmp_path):
    db = tmp_path / "results.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE jobs (a)")
    conn.execute("CREATE TABLE rows (b)")
    conn.commit()
    conn.close()
    code, output = cli("report", str(tmp_path), "--no-plots")
    assert code == 2 and "no meta table" in output and "no jobs/rows" not in output


def test_report_reads_a_legacy_store_without_writing_and_batch_marks_it(tmp_path, plan_file):
    db = one_store(tmp_path / "out")
    unmark(db, drop_added=True)
    before = fingerprint(db)
    code, output = cli("report", str(tmp_path / "out"), "--no-plots", "--json")
    assert code == 0, output
    assert fingerprint(db) == before  # read-only: no marks, no ALTER, no WAL
    with ResultStore(tmp_path / "out", readonly=True) as store:
        assert store.rows("k1")[0]["queries_to_eps"] == -1  # as the ALTER's default gives
    # A write takes it over: marked, the added column in, its rows kept.
    with ResultStore(tmp_path / "out") as store:
        assert store.rows("k1")[0]["queries"] == 9
    assert pragma(db, "application_id") == APPLICATION_ID
    assert pragma(db, "user_version") == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    assert "queries_to_eps" in {r[1] for r in conn.execute("PRAGMA table_info(rows)")}
    conn.close()


def test_a_legacy_store_resumes_under_batch(tmp_path, plan_file):
    plan = plan_file("[grid]\noptimizer = ['sign']\n")
    code, output = cli("batch", str(plan), "--out", str(tmp_path / "ref"))
    assert code == 0, output
    ref = tmp_path / "ref" / "results.sqlite"
    conn = sqlite3.connect(ref)
    (key,) = conn.execute("SELECT key FROM jobs").fetchone()
    full = [tuple(r) for r in conn.execute('SELECT * FROM rows ORDER BY "index"')]
    # As a killed batch of the old main left it: unmarked, half its rows, the job running.
    (tmp_path / "old").mkdir()
    conn.execute("VACUUM INTO ?", (str(tmp_path / "old" / "results.sqlite"),))
    conn.close()
    old = tmp_path / "old" / "results.sqlite"
    conn = sqlite3.connect(old)
    conn.execute('DELETE FROM rows WHERE "index" >= 3')
    conn.execute("UPDATE jobs SET status='running'")
    conn.commit()
    conn.close()
    unmark(old)
    code, output = cli("batch", str(plan), "--out", str(tmp_path / "old"))
    assert code == 0, output
    conn = sqlite3.connect(old)
    assert [tuple(r) for r in conn.execute('SELECT * FROM rows ORDER BY "index"')] == full
    assert conn.execute("SELECT status FROM jobs WHERE key=?", (key,)).fetchone()[0] == "finished"
    conn.close()
    assert pragma(old, "application_id") == APPLICATION_ID


def test_report_shows_a_dead_batchs_job_interrupted_without_writing(tmp_path):
    db = one_store(tmp_path)  # its job left running, its owner's lock free: a killed batch
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE jobs SET status='running'")
    conn.close()
    before = fingerprint(db, wal=True)
    with ResultStore(tmp_path, readonly=True) as store:
        assert store.job("k1")["status"] == "interrupted"
        assert [j["status"] for j in store.jobs()] == ["interrupted"]
    code, output = cli("report", str(tmp_path), "--no-plots", "--json")
    assert code == 0 and '"status": "interrupted"' in output, output
    assert fingerprint(db, wal=True) == before
    with ResultStore(tmp_path) as store:  # a writer reaps it for good
        assert store.job("k1")["status"] == "interrupted"


def test_report_opens_a_store_in_a_read_only_folder(tmp_path):
    db = one_store(tmp_path / "ro")
    (tmp_path / "ro" / "results.sqlite.lock").unlink(missing_ok=True)
    db.chmod(0o444)
    (tmp_path / "ro").chmod(0o555)
    try:
        code, output = cli("report", str(tmp_path / "ro"), "--no-plots", "--json")
        assert code == 0, output
    finally:
        (tmp_path / "ro").chmod(0o755)
        db.chmod(0o644)
