"""The results layer: crash-safe logs, the run folder's rules, the success curve, tables."""

from __future__ import annotations

import json

import pytest

from zoattack.results import CSV_FIELDS, PartLog, RowLog, RunFolder, success_curve
from zoattack.results.tables import format_value, summary_json, summary_table


def _row(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "index": i,
        "label": 1,
        "initial_prediction": 1,
        "final_prediction": 2,
        "success": 1,
        "queries": 10 + i,
        "linf": 0.1,
        "l2": 1.0,
        "stop_reason": "success",
        "queries_to_eps": 10 + i,
    }
    base.update(kw)
    return base


def test_row_log_appends_reads_in_index_order_and_drops_a_torn_line(tmp_path):
    log = RowLog(tmp_path / "rows.csv", CSV_FIELDS)
    assert log.read() == [] and not log.exists()
    log.append([_row(3), _row(1)])
    log.append([_row(2)])
    text = log.path.read_text()
    assert text.splitlines()[0] == ",".join(CSV_FIELDS)  # the header is written once
    assert text.count("index") == 1
    # A crash mid-append leaves half a line; it is not a row.
    log.path.write_text(text + "4,1,1,2,1,1")
    assert [int(r["index"]) for r in log.read()] == [1, 2, 3]
    # A repeated index (a redone chunk written twice): the first record wins.
    log.rewrite(log.read())
    log.append([_row(2, queries=999)])
    assert [r["queries"] for r in log.read()] == ["11", "12", "13"]


def test_row_log_parse_rejects_rows_it_cannot_read(tmp_path):
    def parse(raw):
        return {"index": int(raw["index"]), "v": float(raw["v"])}

    log = RowLog(tmp_path / "v.csv", ("index", "v"), parse)
    log.append([{"index": 0, "v": 0.5}, {"index": 1, "v": "oops"}, {"index": 2, "v": 2}])
    assert log.read() == [{"index": 0, "v": 0.5}, {"index": 2, "v": 2.0}]


def test_row_log_rewrite_is_atomic_and_leaves_no_temp_file(tmp_path):
    log = RowLog(tmp_path / "rows.csv", CSV_FIELDS)
    log.append([_row(0), _row(1)])
    log.rewrite([_row(1)])
    assert [int(r["index"]) for r in log.read()] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


def test_part_log_totals_survive_a_torn_last_line(tmp_path):
    log = PartLog(tmp_path / "parts.jsonl")
    assert log.total("scored_inputs") == 0
    log.record({"chunk": 0, "scored_inputs": 120, "complete": True})
    log.record({"chunk": 1, "scored_inputs": 37, "complete": False})
    with log.path.open("a") as fh:
        fh.write('{"chunk": 1, "scored_inp')
    assert log.total("scored_inputs") == 157
    assert [e["complete"] for e in log.entries()] == [True, False]


def test_success_curve_steps_over_attacked_images():
    xs, ys = success_curve([30, 10], attacked=4, budget=100)
    assert xs == [0.0, 10.0, 30.0, 100.0]
    assert ys == [0.0, 0.25, 0.5, 0.5]
    assert success_curve([], attacked=0, budget=5) == ([0.0, 5.0], [0.0, 0.0])


def test_run_folder_refuses_to_replace_a_run_unless_told(tmp_path):
    empty = RunFolder(tmp_path / "new")
    empty.check_new(overwrite=False)  # nothing there: fine, and nothing created
    assert not (tmp_path / "new").exists()
    folder = RunFolder(tmp_path / "run")
    folder.start({"seed": 0}, {"seed": 0, "images": 2}, resume=False)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        folder.check_new(overwrite=False)
    folder.finish([_row(0), _row(1)], {"images": 2}, {"images": 2})
    with pytest.raises(ValueError, match="already holds a finished run"):
        folder.check_new(overwrite=False)
    folder.check_new(overwrite=True)
    # A universal run's files count as a run too.
    other = tmp_path / "uni"
    other.mkdir()
    (other / "delta.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds"):
        RunFolder(other).check_new(overwrite=False)


def test_run_folder_records_parts_and_keeps_rows_on_resume(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.start({"seed": 1}, {"seed": 1}, resume=False) == []
    folder.record_part({"chunk": 0, "scored_inputs": 50})
    folder.append([_row(0), _row(1)])
    folder.record_part({"chunk": 1, "scored_inputs": 7, "complete": False})
    again = RunFolder(tmp_path)
    assert [int(r["index"]) for r in again.start({"seed": 1}, {"seed": 1}, resume=True)] == [0, 1]
    assert again.scored_inputs() == 57
    assert again.recorded()["status"] == "running"
    # A fresh (overwriting) start forgets the old parts and rows.
    assert again.start({"seed": 1}, {"seed": 1}, resume=False) == []
    assert again.scored_inputs() == 0


def test_run_folder_recorded_rejects_what_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        RunFolder(tmp_path).recorded()
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a zoattack run record"):
        RunFolder(tmp_path).recorded()


def test_tables_format_and_json():
    table = summary_table("t", {"a": 0.123456, "b": 12345, "c": None}, ("a", "b", "c"))
    assert table.row_count == 3
    assert [format_value(v) for v in (0.123456, 12345, None, "x")] == ["0.1235", "12,345", "-", "x"]
    doc = json.loads(summary_json({"seed": 1}, {"images": 2}))
    assert doc == {"settings": {"seed": 1}, "summary": {"images": 2}}
