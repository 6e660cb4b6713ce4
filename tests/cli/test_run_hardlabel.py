"""`zoattack run --attack` (hard-label) end to end: exit codes and one-line errors, files,
--json, determinism, and `zoattack list attacks`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()
BASE = ("run", "--images", "3", "--budget", "50", "--device", "cpu", "--chunk-size", "2")


def invoke(*args: str):
    return runner.invoke(app, [*BASE, *args])


def one_error_line(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), res.output
    text = " ".join(res.output.split())
    assert "Traceback" not in res.output
    for n in needles:
        assert n in text, (n, res.output)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ("--attack", "hsja"),
            ("gives scores", "--labels-only", "--attack square", "--attack zo --optimizer RULE"),
        ),
        (("--labels-only",), ("--labels-only hides the scores", "--attack hsja")),
        (("--attack", "hjsa", "--labels-only"), ("unknown attack", "hsja")),
        (("--attack", "rays", "--labels-only", "--norm", "l2"), ("supports --norm linf",)),
        (("--attack", "hsja", "--labels-only", "--lr", "0.1"), ("--lr does not apply",)),
        (("--attack", "hsja", "--labels-only", "--target", "least-likely"), ("scores",)),
        (("--attack", "hsja", "--labels-only", "--universal"), ("--universal",)),
        (("--attack", "hsja", "--labels-only", "--init-from", "nope.npy"), ("no such file",)),
    ],
)
def test_bad_hard_label_input_is_one_line_exit_2(tmp_path, args, needles):
    out = tmp_path / "run"
    res = invoke(*args, "--out", str(out))
    one_error_line(res, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_init_from_with_the_wrong_shape_is_one_line(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((2, 3, 32, 32), np.float32))
    res = invoke("--attack", "hsja", "--labels-only", "--init-from", str(tmp_path / "s.npy"))
    one_error_line(res, "expected 3x1x28x28")


def test_hard_label_run_writes_rows_curves_and_json(tmp_path):
    out = tmp_path / "run"
    args = ("--attack", "hsja", "--labels-only", "--norm", "l2", "--out", str(out))
    res = invoke(*args, "--json", "--save-images")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    s, settings = doc["summary"], doc["settings"]
    assert settings["attack"] == "hsja" and settings["labels_only"] is True
    assert "binary search" in s["counting_rule"] and "membership" in s["counting_rule"]
    assert "median_distance_at_budget" in s and "no_start" in s
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 3
    assert sum(int(r["queries"]) for r in rows) == s["scored_inputs"]
    for r in rows:
        assert int(r["queries"]) <= 50
        assert r["stop_reason"] in {"budget", "misclassified", "no_start"}
        assert int(r["success"]) == (float(r["l2"]) <= 1.5)
    for png in ("examples.png", "success_vs_queries.png", "distance_vs_queries.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # same command, same seed: identical rows
    again = invoke(*args[:-2], "--out", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "per_image.csv").read_text() == (out / "per_image.csv").read_text()
    # the table names the distance columns
    assert "median distance at budget" in " ".join(again.output.split())
    # --resume of a finished run: nothing to do, same summary
    done = invoke(*args, "--resume", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["summary"]["successes"] == s["successes"]
    # `zoattack report` on the run folder shows the distance columns too
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    assert "median distance at budget" in " ".join(rep.output.split())


def test_opt_runs_any_core_rule_in_a_subspace(tmp_path):
    res = invoke(
        "--attack",
        "opt",
        "--labels-only",
        "--norm",
        "l2",
        "--optimizer",
        "radazo",
        "--estimator",
        "gaussian",
        "--subspace",
        "tile:7",
        "--json",
    )
    assert res.exit_code == 0, res.output
    settings = json.loads(res.stdout)["settings"]
    assert "rule radazo" in settings["method"] and "tile:7" in settings["method"]
    assert settings["attack_options"]["rule_kwargs"]["estimator"] == "gaussian"


def test_list_attacks_says_what_each_needs():
    res = runner.invoke(app, ["list", "attacks", "--markdown"])
    assert res.exit_code == 0, res.output
    lines = {ln.split("|")[1].strip(" `"): ln for ln in res.output.splitlines()[2:] if "|" in ln}
    for name in ("hsja", "sign_opt", "rays", "opt"):
        assert "labels only" in lines[name] and f"--attack {name}" in lines[name]
    for name in ("sign", "square", "zo"):
        assert "scores" in lines[name] and f"--attack {name}" in lines[name]
    # the core rules run under --attack zo, each named in its row
    assert all(rule in lines["zo"] for rule in ("zo_sgd", "lizo", "radazo", "zo_adamm"))
    assert "labels only" in lines["auto"] and "rays" in lines["auto"]
