"""`zoattack run` end to end on the bundled victim, its files, determinism and error lines."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()
BASE = (
    "run",
    "--model",
    "small_cnn",
    "--dataset",
    "fashion-mnist",
    "--images",
    "8",
    "--budget",
    "60",
    "--device",
    "cpu",
)


def invoke(*args: str):
    return runner.invoke(app, [*BASE, *args])


def test_default_run_on_bundled_victim_writes_honest_outputs(tmp_path):
    res = invoke("--out", str(tmp_path), "--json", "--save-images")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    s = data["summary"]
    assert s["images"] == 8
    assert 0 < s["initially_correct"] <= 8
    assert s["skipped_misclassified"] == 8 - s["initially_correct"]
    assert "clean check" in s["counting_rule"]
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == 8
    for row in rows:
        q = int(row["queries"])
        assert 1 <= q <= 60
        assert float(row["linf"]) <= 0.1 + 1e-6
        assert row["stop_reason"] in {"success", "budget", "misclassified"}
        if row["stop_reason"] == "misclassified":
            assert q == 1 and row["initial_prediction"] != row["label"]
        if row["success"] == "1":
            assert row["final_prediction"] != row["label"]
    assert sum(int(r["queries"]) for r in rows) == s["scored_inputs"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["seed"] == 0 and summary["settings"]["budget"] == 60
    for png in ("examples.png", "success_vs_queries.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_same_seed_gives_identical_per_image_csv(tmp_path):
    outs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        res = invoke("--optimizer", "zo_signsgd", "--seed", seed, "--out", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        outs.append((tmp_path / name / "per_image.csv").read_text())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_l2_targeted_and_universal_modes_run():
    res = invoke(
        "--norm", "l2", "--eps", "1.5", "--target", "random", "--optimizer", "zo_sgd", "--json"
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["target"] == "random"
    res = invoke("--universal", "--optimizer", "zo_signsgd", "--subspace", "tile:7", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["summary"]
    assert s["queries_per_image"] <= 60


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--model", "resnt20"), "did you mean resnet20"),
        (("--dataset", "fashion_mnst"), "fashion-mnist"),
        (("--optimizer", "lizzo"), "did you mean lizo"),
        (("--norm", "l3"), "norm must be"),
        (("--eps", "0"), "eps must be"),
        (("--eps", "1.5"), "whole [0,1]"),
        (("--budget", "1"), "--budget must be"),
        (("--images", "0"), "--images must be"),
        (("--weights", "/nonexistent/w.safetensors"), "/nonexistent/w.safetensors"),
        (("--dataset", "cifar10", "--data-dir", "/nonexistent"), "/nonexistent"),
        (("--optimizer", "zo_sgd", "--subspace", "tile:99"), "tile size"),
        (("--subspace", "tile:7"), "sign rule searches the full image"),
        (("--save-images",), "--save-images needs --out"),
        (("--target", "banana"), "target must be"),
        (("--optimizer", "radazo", "--momentum", "0.9"), "does not take option 'momentum'"),
        (("--retries", "2"), "apply to --model remote:URL only"),
        (
            ("--model", "remote:http://127.0.0.1:9", "--timeout", "0.5", "--retries", "0"),
            "127.0.0.1:9",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output
