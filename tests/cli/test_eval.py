"""`zoattack eval`: white-box PGD rows in run's format, the gradient-call ledger, bad input."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.jobs.attack import CSV_FIELDS

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
BASE = ("eval", "--model", "small_cnn", "--images", "12", "--device", "cpu")


def invoke(*args: str):
    return runner.invoke(app, [*BASE, *args])


def test_rows_and_summary_match_run_plus_a_white_box_ledger(tmp_path):
    res = invoke("--steps", "10", "--restarts", "2", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    s, settings = data["summary"], data["settings"]
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert tuple(rows[0]) == (*CSV_FIELDS, "gradient_calls")
    assert len(rows) == 12 and s["images"] == 12
    for r in rows:
        calls = int(r["gradient_calls"])
        assert r["queries"] == "0"  # gradient calls are never reported as queries
        assert float(r["linf"]) <= 0.1 + 1e-6
        if r["stop_reason"] == "misclassified":
            assert calls == 0 and r["initial_prediction"] != r["label"]
        elif r["stop_reason"] == "success":
            assert r["success"] == "1" and r["final_prediction"] != r["label"]
            assert 1 <= calls <= 2 * 11
        else:
            assert r["stop_reason"] == "steps" and r["success"] == "0" and calls == 2 * 11
    correct = [r for r in rows if r["stop_reason"] != "misclassified"]
    fooled = [r for r in correct if r["success"] == "1"]
    assert s["initially_correct"] == len(correct) and s["successes"] == len(fooled)
    assert s["robust_accuracy"] == round((len(correct) - len(fooled)) / 12, 4)
    assert s["gradient_calls"] == sum(int(r["gradient_calls"]) for r in rows)
    assert s["queries"] == 0 and s["scored_inputs"] == 0 and s["median_queries_success"] is None
    assert s["ledger"] == "white-box" and "not queries" in s["counting_rule"]
    assert settings["steps"] == 10 and settings["restarts"] == 2 and settings["attack"] == "pgd"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["summary"]["successes"] == s["successes"]
    assert len(fooled) >= 6  # the undefended victim falls to white-box PGD


def test_same_seed_same_rows_and_more_restarts_never_fewer_successes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, restarts in ((a, "1"), (b, "1"), (c, "3")):
        res = invoke("--steps", "3", "--restarts", restarts, "--eps", "0.05", "--out", str(folder))
        assert res.exit_code == 0, res.output
    assert (a / "per_image.csv").read_text() == (b / "per_image.csv").read_text()
    one = json.loads((a / "summary.json").read_text())["summary"]["successes"]
    three = json.loads((c / "summary.json").read_text())["summary"]["successes"]
    assert three >= one


def test_table_output_names_gradient_calls():
    res = invoke("--steps", "2", "--restarts", "1")
    assert res.exit_code == 0, res.output
    assert "gradient calls" in res.stdout and "robust accuracy" in res.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (("--eps", "0"), "eps"),
        (("--eps", "1.5"), "whole"),
        (("--norm", "l2", "--eps", "28"), "diagonal"),
        (("--steps", "0"), "steps"),
        (("--restarts", "0"), "restarts"),
        (("--images", "0"), "--images"),
        (("--loss", "hinge"), "loss"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, match):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 2


def test_remote_models_are_refused_one_line():
    res = runner.invoke(app, ["eval", "--model", "remote:http://127.0.0.1:9"])
    assert res.exit_code == 2 and "local model" in res.output


def test_robust_name_without_its_card_is_one_line():
    # resnet20_robust ships Fashion-MNIST weights only: on digits there is no card to load.
    res = runner.invoke(
        app, ["eval", "--model", "resnet20_robust", "--dataset", "digits", "--images", "2"]
    )
    assert res.exit_code == 2, res.output
    assert "resnet20_robust" in res.output and "Traceback" not in res.output
