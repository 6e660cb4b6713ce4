"""The error contract's plumbing: --verbose carried per invocation (no module state), and an
error is exactly one line on stderr, with nothing before it, also when a command fails inside
its progress bar (issue 10: "some errors print a blank line first")."""

from __future__ import annotations

import pytest
import typer
from rich.progress import Progress
from typer.testing import CliRunner

from zoattack.cli import _common
from zoattack.cli._common import EXIT_BAD_INPUT, err, guarded, verbose_requested
from zoattack.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "args",
    [
        ("optimize", "--dim", "1"),
        ("optimize", "--dim", "10", "--budget", "50", "--lr", "-1"),
        ("list", "nothing"),
        ("serve", "--port", "99999"),
        ("run", "--norm", "l3", "--images", "2", "--budget", "20", "--device", "cpu"),
    ],
)
def test_bad_input_is_exactly_one_line(args):
    res = invoke(*args)
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    # No .strip(): a leading empty line is exactly the defect this guards against.
    assert res.stderr.startswith("error: "), repr(res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.endswith("\n"), repr(res.stderr)


def test_error_inside_a_progress_bar_is_one_line(tmp_path):
    # train_defense fails (no checkpoint to resume) while the progress bar is up: that path
    # printed "\n" before the error line. Only the start line and the error may be on stderr.
    res = invoke(
        "defend",
        "train",
        "--train-images",
        "4",
        "--epochs",
        "1",
        "--ae-epochs",
        "0",
        "--device",
        "cpu",
        "--resume",
        "--out",
        str(tmp_path / "d"),
    )
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    lines = res.stderr.split("\n")
    assert "" not in lines[:-1], repr(res.stderr)
    assert lines[-2].startswith("error: ") and "checkpoint" in lines[-2]


def test_a_finished_progress_bar_leaves_no_empty_line():
    res = invoke("optimize", "--dim", "10", "--budget", "50", "--optimizer", "zo_sgd", "--json")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""


def test_progress_then_fail_on_the_shared_console(capsys):
    @guarded
    def command() -> None:
        with Progress(console=err, transient=True) as progress:
            progress.add_task("work", total=3)
            raise ValueError("bad --thing")

    with pytest.raises(typer.Exit) as exc:
        command()
    assert exc.value.exit_code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: bad --thing\n"


def test_deliberate_output_still_prints(capsys):
    err.print("a")
    err.line()
    err.print("")
    assert capsys.readouterr().err == "a\n\n\n"


def test_verbose_adds_the_traceback_default_does_not():
    bad = ("optimize", "--dim", "10", "--budget", "50", "--lr", "-1")
    loud = invoke("--verbose", *bad)
    assert loud.exit_code == EXIT_BAD_INPUT
    assert "Traceback" in loud.stderr and "lr must be" in loud.stderr
    # The same process right after: --verbose must not leak into the next invocation.
    quiet = invoke(*bad)
    assert quiet.exit_code == EXIT_BAD_INPUT
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.count("\n") == 1
    assert not verbose_requested()  # reset when the invocation ended


def test_verbose_is_not_module_state():
    assert not verbose_requested()  # outside any command line
    assert not any(
        isinstance(v, (dict, list, set)) and not k.startswith("__")
        for k, v in vars(_common).items()
    ), "cli/_common.py holds module-level mutable state"
