"""Malformed-input corpus, issue 24: SQLite files that are not our stores (handed to `batch
--out` and `report`), run summaries with wrong types, and run folders a killed run left.

Each case keeps the CLI's contract (conftest ``zo_cli``) and, refused, is one line (exit 2)
that changed nothing: the file's bytes are the same and no -wal/-shm file appeared.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from zoattack.batch.store import APPLICATION_ID, SCHEMA_VERSION

PLAN = """
[defaults]
model = "small_cnn"
images = 2
budget = 10
device = "cpu"
[grid]
optimizer = ["sign"]
"""
OURS = ("meta", "jobs", "rows", "batches")


def _ours(conn: sqlite3.Connection) -> None:
    """Our schema, unmarked, without its schema line: the cases below bend one part of it."""
    from zoattack.batch.store import _SCHEMA

    conn.executescript(_SCHEMA)


FOREIGN = {
    "unrelated table": ["CREATE TABLE users (id INTEGER, name TEXT)",
                        "INSERT INTO users VALUES (1, 'a')"],
    "only a view": ["CREATE VIEW v AS SELECT 1 AS x"],
    "jobs and rows, other columns": ["CREATE TABLE jobs (id INTEGER)",
                                     "CREATE TABLE rows (x REAL)"],
    "jobs and rows, no meta": [
        "CREATE TABLE jobs (key TEXT, label TEXT)", "CREATE TABLE rows (job TEXT)"
    ],
    "meta without a schema line": [_ours],
    "ours plus another table": [_ours, "INSERT INTO meta VALUES ('schema', '1')",
                                "CREATE TABLE extra (x)"],
    "ours with an extra column": [_ours, "INSERT INTO meta VALUES ('schema', '1')",
                                  "ALTER TABLE jobs ADD COLUMN owner TEXT"],
    "another program's application_id": ["PRAGMA application_id=1179602508",
                                         "CREATE TABLE t (x)"],
    "another program's id, empty": ["PRAGMA application_id=42"],
    "ours, newer schema": [_ours, "INSERT INTO meta VALUES ('schema', '1')",
                           f"PRAGMA application_id={APPLICATION_ID}",
                           f"PRAGMA user_version={SCHEMA_VERSION + 1}"],
    "ours, newer schema line only": [_ours, "INSERT INTO meta VALUES ('schema', '99')"],
}  # fmt: skip


def _build(db: Path, steps: list) -> None:
    conn = sqlite3.connect(db)
    for step in steps:
        if callable(step):
            step(conn)
        else:
            conn.execute(step)
    conn.commit()
    conn.close()


def _state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _one_line(res) -> str:
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_foreign_sqlite_files_are_refused_untouched(tmp_path, corpus, zo_cli, case):
    (tmp_path / "plan.toml").write_text(PLAN)
    folder = tmp_path / "theirs"
    folder.mkdir()
    db = folder / "results.sqlite"
    _build(db, FOREIGN[case])
    before = _state(folder)
    for args in (
        ["batch", str(tmp_path / "plan.toml"), "--out", str(db)],
        ["batch", str(tmp_path / "plan.toml"), "--out", str(folder)],
        ["batch", str(tmp_path / "plan.toml"), "--out", str(folder), "--dry-run"],
        ["report", str(folder), "--no-plots"],
        ["report", str(db), "--json"],
    ):
        line = _one_line(zo_cli(*args))
        assert "result store" in line or "newer" in line, (args, line)
        assert "no jobs/rows tables" not in line
        assert _state(folder) == before, args
    corpus.add("foreign stores", 5)


# Wrong types in a run's summary.json: each was a table of odd values or "'int' object is not
# iterable" before.
SUMMARIES = {
    "summary is a number": {"settings": {}, "summary": 5},
    "settings is a list": {"settings": [], "summary": {"images": 2}},
    "settings is a number": {"settings": 5, "summary": {}},
    "pairs instead of objects": {"settings": [[1, 2]], "summary": [["images", 1]]},
    "a list": [1, 2],
    "a string": "summary",
    "null": None,
    "rate as text": {"settings": {}, "summary": {"images": 8, "success_rate": "lots"}},
    "images as text": {"settings": {}, "summary": {"images": "8"}},
    "images negative": {"settings": {}, "summary": {"images": -1}},
    "images a bool": {"settings": {}, "summary": {"images": True}},
    "queries an object": {"settings": {}, "summary": {"images": 2, "mean_queries_success": {}}},
    "distance a list": {"settings": {}, "summary": {"images": 2, "median_l2_success": [1]}},
    "successes a bool": {"settings": {}, "summary": {"images": 2, "successes": False}},
    "counting rule a number": {"settings": {}, "summary": {"images": 2, "counting_rule": 5}},
    "model a number": {"settings": {"model": 3}, "summary": {"images": 2}},
    "optimizer a list": {"settings": {"optimizer": ["a"]}, "summary": {"images": 2}},
    "method an object": {"settings": {"method": {}}, "summary": {"images": 2}},
    "no summary": {"settings": {}},
}


@pytest.mark.parametrize("case", sorted(SUMMARIES))
@pytest.mark.parametrize("as_json", [False, True])
def test_summary_json_with_wrong_types_is_one_line(tmp_path, corpus, zo_cli, case, as_json):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARIES[case]))
    line = _one_line(zo_cli("report", str(tmp_path), *(["--json"] if as_json else [])))
    assert "summary.json is not a zoattack run summary" in line
    assert "not iterable" not in line
    corpus.add("run summaries")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, zo_cli) -> Path:
    folder = tmp_path_factory.mktemp("run") / "r"
    res = zo_cli("run", "--images", "3", "--budget", "6", "--chunk-size", "1", "--device",
                 "cpu", "--out", str(folder))  # fmt: skip
    assert res.exit_code == 0, res.output
    return folder


def _killed(src: Path, dst: Path, keep_rows: int | None) -> Path:
    """What a run killed part-way leaves: run.json 'running', some rows, no summary.json."""
    shutil.copytree(src, dst)
    (dst / "summary.json").unlink()
    meta = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    if keep_rows is not None:
        lines = (dst / "per_image.csv").read_text().splitlines()
        (dst / "per_image.csv").write_text("\n".join(lines[: 1 + keep_rows]) + "\n")
    else:
        (dst / "per_image.csv").unlink()
    return dst


@pytest.mark.parametrize("keep_rows", [0, 1, None])
def test_report_on_a_killed_run_says_how_to_resume_it(tmp_path, corpus, zo_cli, finished_run,
                                                      keep_rows):  # fmt: skip
    folder = _killed(finished_run, tmp_path / "k", keep_rows)
    line = _one_line(zo_cli("report", str(folder)))
    assert "unfinished `zoattack run`" in line and "--resume" in line and str(folder) in line
    if keep_rows is not None:
        assert f"({keep_rows} of 3 images stored)" in line
    assert not (folder / "plots").exists() and not (folder / "results.sqlite").exists()
    corpus.add("run folders")


def test_report_on_a_killed_run_with_a_damaged_record_is_one_line(tmp_path, zo_cli, corpus,
                                                                   finished_run):  # fmt: skip
    folder = _killed(finished_run, tmp_path / "k", 1)
    (folder / "run.json").write_text("[1, 2")
    line = _one_line(zo_cli("report", str(folder)))
    assert "unfinished `zoattack run`" in line
    corpus.add("run folders")
