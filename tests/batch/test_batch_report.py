"""Reports from a result store: per-job and pooled summaries, Markdown, CSV and figures."""

from __future__ import annotations

import csv

import pytest

from zoattack.batch import LocalExecutor, ResultStore, load_plan, run_batch
from zoattack.batch.report import (
    Results,
    job_table,
    save_query_histograms,
    save_success_curves,
    to_markdown,
    write_csv,
    write_rows_csv,
)
from zoattack.results.rows import summarize_rows

GRID = """
[grid]
optimizer = ["sign", "zo_signsgd"]
eps = [0.05, 0.1]
seed = [0, 1]
images = 4
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("report")
    (folder / "plan.toml").write_text(tiny + GRID)
    plan = load_plan(folder / "plan.toml")
    with ResultStore(folder) as store:
        run_batch(plan, store, LocalExecutor())
    return Results(folder)


def test_job_lines_are_run_summaries_of_the_stored_rows(results):
    lines = results.summaries()
    assert len(lines) == 8
    # grouped: model, then optimizer, then eps and seed
    assert [(s["label"], s["eps"], s["seed"]) for s in lines][:3] == [
        ("sign", 0.05, 0),
        ("sign", 0.05, 1),
        ("sign", 0.1, 0),
    ]
    for line in lines:
        rows = results.rows[line["key"]]
        expected = summarize_rows(rows, wall_seconds=1.0, scored_inputs=1)
        for k in (
            "success_rate",
            "mean_queries_success",
            "median_queries_success",
            "initially_correct",
            "median_linf_success",
        ):
            assert line[k] == expected[k]
        assert line["median_distortion_success"] == expected["median_linf_success"]
        assert line["status"] == "finished" and line["stored"] == 4
        assert line["scored_inputs"] == sum(r["queries"] for r in rows)


def test_groups_pool_seeds(results):
    groups = results.groups()
    assert len(groups) == 4 and all(g["jobs"] == 2 and g["seeds"] == 2 for g in groups)
    for g in groups:
        keys = [
            s["key"]
            for s in results.summaries()
            if (s["label"], s["eps"]) == (g["label"], g["eps"])
        ]
        pooled = summarize_rows(
            [r for k in keys for r in results.rows[k]], wall_seconds=0, scored_inputs=0
        )
        assert g["success_rate"] == pooled["success_rate"]


def test_markdown_csv_and_rows_exports(results, tmp_path):
    md = to_markdown(results)
    assert "| model | optimizer | norm | eps |" in md and "## Pooled over seeds" in md
    assert md.count("| small_cnn | sign |") == 4 + 2
    lines = list(csv.DictReader(write_csv(tmp_path / "jobs.csv", results.summaries()).open()))
    assert len(lines) == 8 and {"key", "success_rate", "median_queries_success", "seed"} <= set(
        lines[0]
    )
    rows = list(csv.DictReader(write_rows_csv(tmp_path / "rows.csv", results).open()))
    assert len(rows) == 8 * 4
    assert {"optimizer", "label", "queries", "stop_reason"} <= set(rows[0])


def test_figures_are_pngs(results, tmp_path):
    for fn, name in ((save_success_curves, "curves.png"), (save_query_histograms, "hist.png")):
        path = fn(tmp_path / name, results)
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000


def test_table_moves_constant_columns_to_the_caption(results):
    table = job_table(results.summaries())
    headers = [c.header for c in table.columns]
    assert "optimizer" in headers and "eps" in headers and "model" not in headers
    assert "model small_cnn" in str(table.caption) and "budget 40" in str(table.caption)
    assert table.row_count == 8


def test_empty_or_missing_results_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="no results.sqlite in"):
        Results(tmp_path)
    ResultStore(tmp_path).close()
    with pytest.raises(ValueError, match="holds no jobs yet"):
        Results(tmp_path)
