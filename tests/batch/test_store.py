"""The SQLite result store: schema, idempotent chunk writes, atomic finish, locking."""

from __future__ import annotations

import sqlite3

import pytest

from zoattack.batch.store import DB_NAME, ResultStore, locate
from zoattack.jobs.attack import AttackSpec
from zoattack.results.rows import CSV_FIELDS

SPEC = AttackSpec(images=3, budget=40).resolved()
SETTINGS = {"images": 3, "zoattack": "0.1.0", "torch": "2.x"}


def row(i: int, **kw) -> dict:
    base = dict(
        index=i,
        label=1,
        initial_prediction=1,
        final_prediction=2,
        success=1,
        queries=7 + i,
        linf=0.1,
        l2=1.25,
        stop_reason="success",
        queries_to_eps=7 + i,
    )
    return {**base, **kw}


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path) as s:
        s.register_jobs([("k1", "sign", 0, SPEC)])
        yield s


def test_schema_wal_and_csv_fields(store, tmp_path):
    assert store.path == tmp_path / DB_NAME
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in store.conn.execute("PRAGMA table_info(rows)")]
    assert cols == ["job", *CSV_FIELDS]
    jobs = {r[1] for r in store.conn.execute("PRAGMA table_info(jobs)")}
    assert {
        "key",
        "spec",
        "settings",
        "seed",
        "status",
        "started_at",
        "finished_at",
        "seconds",
        "scored_inputs",
        "zoattack_version",
        "torch_version",
    } <= jobs
    rec = store.job("k1")
    assert rec["status"] == "pending" and rec["optimizer"] == "sign" and rec["eps"] == 0.1


def test_rows_are_written_once_and_the_job_finishes_with_its_last_row(store):
    store.start_job("k1", SETTINGS)
    assert store.job("k1")["status"] == "running"
    assert store.add_rows("k1", [row(0), row(1)], scored_inputs=30, seconds=0.5) == 2
    # a retried task or a rerun delivers the same chunk again: nothing is duplicated
    assert store.add_rows("k1", [row(0), row(1)], scored_inputs=30, seconds=0.5) == 0
    assert store.job("k1")["status"] == "running"
    assert store.add_rows("k1", [row(1), row(2)], scored_inputs=12) == 1
    rec = store.job("k1")
    assert rec["status"] == "finished" and rec["finished_at"] is not None
    assert rec["scored_inputs"] == 72 and rec["zoattack_version"] == "0.1.0"
    assert [r["index"] for r in store.rows("k1")] == [0, 1, 2]
    assert store.rows("k1")[2] == row(2)
    assert store.done_indices("k1") == {0, 1, 2}
    # a finished job stays finished
    store.fail_job("k1", "late error")
    assert store.job("k1")["status"] == "finished"


def test_a_chunk_is_all_or_nothing(store):
    store.start_job("k1", SETTINGS)
    broken = {k: v for k, v in row(1).items() if k != "queries"}
    with pytest.raises(KeyError):
        store.add_rows("k1", [row(0), broken], scored_inputs=99)
    assert store.rows("k1") == [] and store.job("k1")["scored_inputs"] == 0
    with pytest.raises(sqlite3.IntegrityError):
        store.add_rows("k1", [row(0), row(1, stop_reason=None)])
    assert store.rows("k1") == []


def test_reopening_keeps_everything_and_other_files_are_refused(store, tmp_path):
    store.start_job("k1", SETTINGS)
    store.add_rows("k1", [row(0)])
    with ResultStore(tmp_path, create=False) as again:
        assert again.rows("k1") == [row(0)]
    bogus = tmp_path / "other.sqlite"
    bogus.write_bytes(b"not a database at all, clearly" * 10)
    with pytest.raises(ValueError, match="is not a zoattack result store"):
        ResultStore(bogus, create=False)
    with pytest.raises(ValueError, match="no results.sqlite in"):
        locate(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        locate(tmp_path / "nope.sqlite")


def test_a_second_writer_is_refused(store):
    with (
        store.exclusive(),
        ResultStore(store.path) as other,
        pytest.raises(
            ValueError,
            match=r"another `zoattack batch` \(pid \d+\) is "
            "writing to",
        ),
        other.exclusive(),
    ):
        pass
    with store.exclusive():  # released on exit
        pass


def test_batches_are_recorded(store):
    bid = store.begin_batch("plan.toml", "[grid]\n", "local")
    store.end_batch(bid, "finished")
    rec = store.conn.execute("SELECT * FROM batches WHERE id=?", (bid,)).fetchone()
    assert rec["status"] == "finished" and rec["executor"] == "local"
