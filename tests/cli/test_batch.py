"""`zoattack batch` and `zoattack report` end to end: dry runs, runs, reruns, reports, errors."""

from __future__ import annotations

import json
import os
import sqlite3
import sys

import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()
PLAN = """
[batch]
name = "tiny"
out = "results"

[defaults]
images = 4
budget = 40
chunk_size = 2
device = "cpu"

[grid]
optimizer = ["sign", "zo_signsgd"]
seed = [0, 1]
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny batches on a shared 2-core machine: one intra-op thread (tests/conftest.py)."""


def invoke(*args: str, cwd=None):
    """Run the CLI; ``cwd``: the current folder (a plan's [batch] out is relative to it)."""
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished batch: (plan path, results folder, first run's output)."""
    folder = tmp_path_factory.mktemp("cli")
    plan = folder / "plan.toml"
    plan.write_text(PLAN)
    res = invoke("batch", plan, cwd=folder)
    assert res.exit_code == 0, res.output
    return plan, folder / "results", res


def test_dry_run_lists_jobs_and_writes_nothing(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    res = invoke("batch", plan, "--dry-run", cwd=tmp_path)
    assert res.exit_code == 0, res.output
    assert (
        "tiny: 4 jobs" in res.stdout and res.stdout.count(" new ") + res.stdout.count("new\n") >= 1
    )
    assert "would write to" in res.stdout
    assert not (tmp_path / "results").exists()


def test_batch_writes_the_store_and_a_rerun_skips_everything(done):
    plan, folder, first = done
    assert "4 jobs: 0 already finished, 4 finished now, 0 failed; 16 new rows" in " ".join(
        first.stdout.split()
    )
    with sqlite3.connect(folder / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 16
        assert {r[0] for r in con.execute("SELECT status FROM jobs")} == {"finished"}
    again = invoke("batch", plan, cwd=folder.parent)
    assert again.exit_code == 0, again.output
    assert "4 already finished, 0 finished now" in " ".join(again.stdout.split())
    listing = invoke("batch", plan, "--dry-run", cwd=folder.parent)
    assert listing.stdout.count("finished") == 4


def test_report_prints_tables_and_writes_exports(done, tmp_path):
    _, folder, _ = done
    md, jobs_csv = tmp_path / "r.md", tmp_path / "r.csv"
    res = invoke(
        "report", folder, "--markdown", md, "--csv", jobs_csv, "--plots", tmp_path / "figs"
    )
    assert res.exit_code == 0, res.output
    assert "pooled over seeds" in res.stdout and "zo_signsgd" in res.stdout
    assert md.read_text().startswith("# Batch results")
    assert len(jobs_csv.read_text().strip().splitlines()) == 1 + 4
    for png in ("success_vs_queries.png", "query_histograms.png"):
        assert (tmp_path / "figs" / png).read_bytes()[:4] == b"\x89PNG"
    js = invoke("report", folder / "results.sqlite", "--json", "--no-plots")
    data = json.loads(js.stdout)
    assert len(data["jobs"]) == 4 and len(data["groups"]) == 2


@pytest.mark.parametrize(
    "body,needle",
    [
        (
            '[grid]\nseed = [0]\noptimizr = "sign"\n',
            "plan.toml:3: unknown setting 'optimizr' in [grid]; did you mean optimizer?",
        ),
        ('[[job]]\noptimizer = "lizzo"\n', "plan.toml:2: job 1: unknown optimizer 'lizzo'"),
        ('[[job]]\nimages = "ten"\n', "plan.toml:2: images must be an integer"),
        ("[[job]\n", "not valid TOML"),
    ],
)
def test_bad_plans_exit_2_with_one_line(tmp_path, body, needle):
    plan = tmp_path / "plan.toml"
    plan.write_text(body)
    res = invoke("batch", plan, "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert needle in " ".join(res.stderr.split())
    assert len(res.stderr.strip().splitlines()) <= 2  # one line (soft-wrapped at most)
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_missing_files_and_bad_options_exit_2(tmp_path, done):
    for args, needle in (
        (("batch", tmp_path / "nope.toml"), "plan file"),
        (("report", tmp_path / "nowhere"), "does not exist"),
        (("report", tmp_path), "no results.sqlite in"),
        (("batch", done[0], "--executor", "spark"), "--executor must be local or ray"),
        (("batch", done[0], "--workers", "2"), "--workers and --address are for"),
    ):
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in " ".join(res.stderr.split())


def test_executor_ray_without_ray_says_how_to_install(done, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = invoke("batch", done[0], "--executor", "ray", "--out", done[1].parent / "ray")
    assert res.exit_code == 2
    assert "pip install 'zoattack[ray]'" in " ".join(res.stderr.split())


def test_a_failed_job_exits_3_and_a_rerun_completes_it(tmp_path, monkeypatch):
    import zoattack.batch.executors as ex

    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    real = ex.prepare

    def broken(spec, model=None):
        if spec.seed == 1 and spec.optimizer == "sign":
            raise RuntimeError("model server unreachable")
        return real(spec, model=model)

    monkeypatch.setattr(ex, "prepare", broken)
    res = invoke("batch", plan, cwd=tmp_path)
    assert res.exit_code == 3
    err = " ".join(res.stderr.split())
    assert "failed: could not prepare the job: RuntimeError: model server unreachable" in err
    assert "rerun the same command to retry" in err
    monkeypatch.setattr(ex, "prepare", real)
    res = invoke("batch", plan, cwd=tmp_path)
    assert res.exit_code == 0, res.output
    assert "3 already finished, 1 finished now" in " ".join(res.stdout.split())


def test_ctrl_c_exits_3_like_run_and_says_how_to_continue(tmp_path, monkeypatch):
    import zoattack.batch.runner as runner_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "run_batch", interrupted)
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    res = invoke("batch", plan, cwd=tmp_path)
    assert res.exit_code == 3  # EXIT_INTERRUPTED, as `zoattack run` (was 130)
    assert "rerun the same command to continue" in " ".join(res.stderr.split())


def test_a_finished_batch_leaves_no_lock_file(done):
    _, folder, _ = done
    assert (folder / "results.sqlite").is_file()
    assert not (folder / "results.sqlite.lock").exists()


def test_report_figures_as_svg_and_pdf_titled_with_n(done, tmp_path):
    _, folder, _ = done
    res = invoke("report", folder, "--plot-format", "svg", "--plots", tmp_path)
    assert res.exit_code == 0, res.output
    svg = (tmp_path / "success_vs_queries.svg").read_text()
    assert "small_cnn / fashion-mnist" in svg and "eps=" in svg and "N=" in svg
    res = invoke("report", folder, "--plot-format", "pdf", "--plots", tmp_path)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "query_histograms.pdf").read_bytes().startswith(b"%PDF")
