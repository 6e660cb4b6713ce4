"""Conventional threat models per data set (the data-set registry), fractions for --eps, and
where a run's eps came from (run header, run.json / --json settings)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.data.registry import conventional_eps, eps_text
from zoattack.jobs.attack import AttackSpec, eps_source
from zoattack.norms import parse_eps

runner = CliRunner()


@pytest.mark.parametrize(
    ("dataset", "norm", "eps", "source"),
    [
        ("cifar10", "linf", 8 / 255, "cifar10 convention"),
        ("cifar10", "l2", 0.5, "cifar10 convention"),
        ("CIFAR_10", "l2", 0.5, "cifar10 convention"),
        ("mnist", "linf", 0.3, "mnist convention"),
        ("mnist", "l2", 2.0, "mnist convention"),
        ("fashion-mnist", "linf", 0.1, "fashion-mnist convention"),
        ("fashion-mnist", "l2", 1.5, "fashion-mnist convention"),
        ("digits", "l2", 0.5, "digits convention"),
        ("imagefolder", "linf", 4 / 255, "imagefolder convention"),
        ("imagefolder", "l2", 3.0, "imagefolder convention"),
        ("cifar10@3x224x224", "linf", 4 / 255, "ImageNet-sized input (224x224) convention"),
        ("cifar10@3x224x224", "l2", 3.0, "ImageNet-sized input (224x224) convention"),
        ("fashion-mnist@3x32x32", "linf", 0.1, "fashion-mnist convention"),
        ("no-such-set", "linf", 0.1, "zoattack default"),
    ],
)
def test_conventional_eps(dataset, norm, eps, source):
    got, origin = conventional_eps(dataset, norm)
    assert got == pytest.approx(eps) and origin == source


def test_the_spec_resolves_eps_from_the_data_set():
    assert AttackSpec(dataset="cifar10").resolved().eps == pytest.approx(8 / 255)
    assert AttackSpec(dataset="cifar10", norm="l2").resolved().eps == pytest.approx(0.5)
    assert AttackSpec(dataset="mnist", attack="rays").resolved().eps == pytest.approx(0.3)
    assert AttackSpec(dataset="cifar10", eps="2/255").resolved().eps == pytest.approx(2 / 255)
    assert AttackSpec(eps=0.05).resolved().eps == 0.05
    assert eps_source(8 / 255, "cifar10", "linf") == "cifar10 convention"
    assert eps_source(0.02, "cifar10", "linf") == "--eps"


def test_eps_fractions():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps(" 0.5 ") == 0.5 and parse_eps(0.25) == 0.25
    for bad in ("x", "8/0", "8/", "1/2/3"):
        with pytest.raises(ValueError, match="fraction such as 8/255"):
            parse_eps(bad)
    assert eps_text(8 / 255) == "8/255" and eps_text(0.1) == "0.1" and eps_text(1.5) == "1.5"


def _cifar(root: Path, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": [i % 10 for i in range(n)], "data": data}, f, protocol=2)
    return root


def _small_cnn_for_cifar(path: Path) -> Path:
    from zoattack.models import create_model, save_weights
    from zoattack.seeding import make_generator

    model = create_model("small_cnn", dataset="cifar10", generator=make_generator(0))
    save_weights(model, path, {"model": "small_cnn", "dataset": "cifar10"})
    return path


def test_run_header_and_settings_say_where_eps_came_from(tmp_path):
    data = _cifar(tmp_path / "data")
    weights = _small_cnn_for_cifar(tmp_path / "w.safetensors")
    base = ["run", "--dataset", "cifar10", "--data-dir", str(data), "--weights", str(weights)]
    base += ["--images", "2", "--budget", "10", "--device", "cpu"]
    res = runner.invoke(app, [*base, "--json"])
    assert res.exit_code == 0, res.output
    settings = json.loads(res.stdout)["settings"]
    assert settings["eps"] == pytest.approx(8 / 255)
    assert settings["eps_source"] == "cifar10 convention"
    res = runner.invoke(app, [*base, "--eps", "4/255", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "eps=4/255 (--eps)" in " ".join(res.stdout.split())
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["settings"]["eps"] == pytest.approx(4 / 255)
    assert recorded["settings"]["eps_source"] == "--eps"
    # resuming with the same command (a fraction again) is the same run
    res = runner.invoke(app, [*base, "--eps", "4/255", "--out", str(tmp_path / "run"), "--resume"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, "--eps", "8/0"])
    assert res.exit_code == 2 and "fraction such as 8/255" in res.output


def test_eval_takes_fractions_and_records_the_source(tmp_path):
    res = runner.invoke(
        app,
        ["eval", "--images", "2", "--steps", "2", "--restarts", "1", "--device", "cpu", "--json"],
    )
    assert res.exit_code == 0, res.output
    settings = json.loads(res.stdout)["settings"]
    assert settings["eps"] == 0.1 and settings["eps_source"] == "fashion-mnist convention"
    res = runner.invoke(
        app,
        ["eval", "--images", "2", "--steps", "2", "--restarts", "1", "--device", "cpu"]
        + ["--eps", "16/255", "--json"],
    )
    settings = json.loads(res.stdout)["settings"]
    assert settings["eps"] == pytest.approx(16 / 255) and settings["eps_source"] == "--eps"


def test_list_datasets_shows_the_conventions():
    res = runner.invoke(app, ["list", "datasets", "--markdown"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "linf:8/255" in text and "l2:0.5" in text and "linf:0.3" in text


def test_plan_eps_fraction(tmp_path):
    from zoattack.batch.plan import load_plan

    plan = tmp_path / "plan.toml"
    plan.write_text('[defaults]\nimages = 2\nbudget = 10\n[[job]]\neps = "8/255"\n[[job]]\n')
    jobs = load_plan(plan).jobs
    assert jobs[0].spec.eps == pytest.approx(8 / 255)
    assert jobs[1].spec.eps == 0.1
    plan.write_text('[[job]]\neps = "eight"\n')
    with pytest.raises(ValueError, match="fraction such as 8/255"):
        load_plan(plan)
