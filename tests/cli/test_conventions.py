"""The command line's conventions: rates as percents, flags shown as flags, bare `report` and
`list`, grouped `defend train` help, and figures titled and in the format asked for."""

from __future__ import annotations

import os

import pytest
import typer
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()
RUN = (
    "run",
    "--images",
    "6",
    "--budget",
    "40",
    "--device",
    "cpu",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny runs on a shared 2-core machine: one intra-op thread (tests/conftest.py)."""


def invoke(*args: object, cwd=None):
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args], terminal_width=200)
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """./runs with one finished `zoattack run --out` folder (SVG figures)."""
    here = tmp_path_factory.mktemp("conventions")
    res = invoke(*RUN, "--out", "runs/svg", "--save-images", "--plot-format", "svg", cwd=here)
    assert res.exit_code == 0, res.output
    return here, res


def test_run_prints_the_success_rate_as_a_percent(runs):
    _, res = runs
    line = next(ln for ln in res.stdout.splitlines() if "success rate" in ln)
    assert line.rstrip(" │|").endswith("%"), line


def test_run_figures_in_the_format_asked_with_a_full_title(runs):
    here, _ = runs
    folder = here / "runs" / "svg"
    for name in ("examples", "success_vs_queries"):
        svg = (folder / f"{name}.svg").read_text()
        for part in ("small_cnn", "fashion-mnist", "linf", "eps=0.1", "N="):
            assert part in svg, (name, part)
    assert not list(folder.glob("*.png"))


def test_a_bad_plot_format_is_refused_before_any_work(tmp_path):
    res = invoke(*RUN, "--out", tmp_path / "o", "--save-images", "--plot-format", "gif")
    assert res.exit_code == 2
    assert "--plot-format must be one of png, pdf, svg" in " ".join(res.stderr.split())
    assert not (tmp_path / "o").exists()


def test_bare_report_reports_runs_in_the_current_folder(runs):
    here, _ = runs
    res = invoke("report", cwd=here)
    assert res.exit_code == 0, res.output
    assert "runs/svg" in res.stdout and "run" in res.stdout and "%" in res.stdout


def test_bare_report_without_results_is_one_line(tmp_path):
    res = invoke("report", cwd=tmp_path)
    assert res.exit_code == 2
    assert "runs" in res.stderr and "Traceback" not in res.output


def test_help_shows_flags_without_a_value_type():
    def walk(cmd, path):
        yield path
        if hasattr(cmd, "commands"):  # a group (Typer ships its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])

    for path in walk(typer.main.get_command(app), []):
        res = invoke(*path, "--help")
        assert res.exit_code == 0, path
        assert "<bool>" not in res.stdout, path
    assert "--json " in invoke("run", "--help").stdout


def test_defend_train_groups_its_options_in_panels():
    text = invoke("defend", "train", "--help").stdout
    for panel in ("Method (ZO estimator)", "Black box and data", "Training", "Architecture", "Run"):
        assert f"─ {panel} ─" in text, panel


def test_eval_prints_rates_as_percents():
    res = invoke("eval", "--model", "small_cnn", "--images", "6", "--device", "cpu", "--steps", "2")
    assert res.exit_code == 0, res.output
    for metric in ("success rate", "robust accuracy"):
        line = next(ln for ln in res.stdout.splitlines() if metric in ln)
        assert line.rstrip(" │|").endswith("%"), line
