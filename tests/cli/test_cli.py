"""CLI contract: help/version, registry listings, optimize end-to-end, error lines and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from zoattack import __version__
from zoattack.cli.main import app
from zoattack.estimators import ESTIMATORS
from zoattack.optim import OPTIMIZERS

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("list", "optimize"):
        assert cmd in res.stdout


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0
    assert __version__ in res.stdout


def test_python_dash_m_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "zoattack", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert __version__ in proc.stdout


@pytest.mark.parametrize("kind,registry", [("optimizers", OPTIMIZERS), ("estimators", ESTIMATORS)])
def test_list_shows_every_registered_name(kind, registry):
    res = invoke("list", kind, "--markdown")
    assert res.exit_code == 0
    for name in registry.names():
        assert f"`{name}`" in res.stdout
    # Rich table form too
    res = invoke("list", kind)
    assert res.exit_code == 0
    assert all(name in res.stdout for name in registry.names())


def test_list_unknown_kind_exits_2():
    res = invoke("list", "gadgets")
    assert res.exit_code == 2
    assert "cannot list" in res.stderr


def _optimize_json(*extra: str) -> dict:
    res = invoke(
        "optimize",
        "--function",
        "quadratic",
        "--dim",
        "50",
        "--budget",
        "400",
        "--seeds",
        "2",
        "--json",
        *extra,
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


GRADIENT_RULES = [e.name for e in OPTIMIZERS if not e.flags.get("search")]
SEARCH_RULES = [e.name for e in OPTIMIZERS if e.flags.get("search")]


@pytest.mark.parametrize("rule", GRADIENT_RULES)
def test_optimize_json_respects_budget_and_lowers_loss(rule):
    summary = _optimize_json("--optimizer", rule)
    assert summary["optimizer"] == rule
    tuned = OPTIMIZERS.get(rule).optimize_defaults  # the rule's registry entry sets the step
    assert tuned is not None and summary["lr"] == tuned.lr
    assert all(q <= 400 for q in summary["queries"])
    assert all(q > 0 for q in summary["queries"])
    assert all(f < i for f, i in zip(summary["final_loss"], summary["initial_loss"]))
    assert "one query" in summary["counting_rule"]


@pytest.mark.parametrize("rule", SEARCH_RULES)
def test_optimize_refuses_search_rules(rule):
    res = invoke("optimize", "--dim", "10", "--budget", "50", "--optimizer", rule)
    assert res.exit_code == 2
    assert "search rule" in res.stderr


def test_optimize_same_seed_identical_different_seed_differs():
    a = _optimize_json("--optimizer", "lizo", "--seed", "3")
    b = _optimize_json("--optimizer", "lizo", "--seed", "3")
    c = _optimize_json("--optimizer", "lizo", "--seed", "4")
    for key in ("final_loss", "queries", "steps"):
        assert a[key] == b[key]
    assert a["final_loss"] != c["final_loss"]


def test_optimize_table_output():
    res = invoke(
        "optimize",
        "--function",
        "rosenbrock",
        "--dim",
        "20",
        "--budget",
        "200",
        "--seeds",
        "1",
        "--optimizer",
        "zo_adamm",
        "--estimator",
        "dap",
    )
    assert res.exit_code == 0, res.output
    assert "zo_adamm + dap" in res.stdout
    assert "counting rule" in res.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--optimizer", "lizzo"), "did you mean lizo"),
        (("--estimator", "gausian"), "did you mean gaussian"),
        (("--function", "rosenbrok"), "did you mean rosenbrock"),
        (("--lr", "-1"), "lr must be"),
        (("--mu", "0"), "mu must be"),
        (("--samples", "0"), "num_samples must be"),
        (("--budget", "0"), "--budget must be"),
        (("--dim", "1"), "--dim must be"),
        (("--device", "tpu"), "--device must be"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle):
    res = invoke("optimize", "--dim", "10", "--budget", "50", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_verbose_shows_traceback():
    res = invoke("--verbose", "optimize", "--dim", "10", "--budget", "50", "--lr", "-1")
    assert res.exit_code == 2
    assert "Traceback" in res.stderr
