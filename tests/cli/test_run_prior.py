"""`zoattack run --prior MODEL` end to end on the bundled models: a small_cnn prior against
resnet20 and the reverse; the surrogate is named in the method line and run.json, its
gradients are never charged to the victim, and a bad --prior exits 2 with one line."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(
        app,
        [
            "run",
            "--dataset",
            "fashion-mnist",
            "--images",
            "3",
            "--budget",
            "80",
            "--device",
            "cpu",
            "--optimizer",
            "zo_adamm",
            *args,
        ],
    )


@pytest.mark.parametrize(
    "victim, surrogate", [("resnet20", "small_cnn"), ("small_cnn", "resnet20")]
)
def test_prior_from_one_bundled_model_attacks_the_other(tmp_path, victim, surrogate):
    res = run("--model", victim, "--prior", surrogate, "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    settings = data["settings"]
    assert settings["estimator"] == "prior" and settings["prior"] == surrogate
    assert f"transfer prior: surrogate {surrogate}" in settings["method"]
    assert "cost no victim queries" in settings["method"]
    run_json = json.loads((tmp_path / "run.json").read_text())
    assert run_json["settings"]["prior"] == surrogate
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    # The ledger counts victim queries only: every row within budget, and the sum is what
    # the black box scored.
    assert all(1 <= int(r["queries"]) <= 80 for r in rows)
    assert sum(int(r["queries"]) for r in rows) == data["summary"]["scored_inputs"]


def test_explicit_estimator_wins_over_prior_and_says_the_surrogate_is_unused():
    res = run("--model", "small_cnn", "--prior", "small_cnn", "--estimator", "sphere", "--json")
    assert res.exit_code == 0, res.output
    settings = json.loads(res.stdout)["settings"]
    assert settings["estimator"] == "sphere"
    assert "unused by the sphere estimator" in settings["method"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--prior", "no_such_model"), "unknown model"),
        (("--estimator", "prior"), "--prior MODEL"),
        (("--prior-weights", "w.safetensors"), "--prior MODEL"),
        (("--prior", "small_cnn", "--optimizer", "sign"), "cannot use --prior"),
        (("--prior", "remote:http://127.0.0.1:9"), "local model"),
        (("--prior", "small_cnn", "--attack", "hsja", "--labels-only"), "--attack"),
    ],
)
def test_bad_prior_exits_2_with_one_line(args, needle):
    res = run("--model", "small_cnn", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_universal_with_prior_runs_and_names_the_surrogate(tmp_path):
    out = tmp_path / "u"
    res = run("--model", "small_cnn", "--prior", "resnet20", "--universal", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "transfer prior: surrogate resnet20" in " ".join(res.output.split())
    data = json.loads((out / "summary.json").read_text())
    summary = data["summary"]
    assert summary["surrogate"] == "resnet20" and data["settings"]["estimator"] == "prior"
    # one evaluation scores each attacked image once; the clean check once per image
    assert (
        summary["scored_inputs"]
        == summary["images"] + summary["evaluations"] * summary["initially_correct"]
    )
