"""`zoattack train` end to end on scikit-learn digits (always available, seconds on CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.models import MODELS, create_model, evaluate

runner = CliRunner()


def train(*args: str):
    return runner.invoke(app, ["train", *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "cnn.safetensors"
    res = train(
        "--model",
        "small_cnn",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    return res, out


def test_writes_safetensors_and_card(trained):
    res, out = trained
    assert res.exit_code == 0, res.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model"] == "small_cnn" and card["dataset"] == "digits"
    assert card["recipe"]["epochs"] == 2 and card["recipe"]["optimizer"] == "adam"
    assert card["recipe"]["lr"] == 3e-3 and card["recipe"]["batch_size"] == 128
    assert card["seed"] == 5 and card["test_examples"] == 360
    assert card["param_count"] > 0 and card["torch_version"] == torch.__version__
    assert "--seed 5" in card["command"] and card["date"]
    assert 0.3 < card["test_accuracy"] <= 1.0
    assert f"{card['test_accuracy']:.2%}" in res.stdout


def test_written_weights_reload_to_the_card_accuracy(trained):
    _, out = trained
    from zoattack.data import load_dataset

    card = json.loads(out.with_suffix(".json").read_text())
    model = create_model("small_cnn", weights=out)
    test = load_dataset("digits", split="test")
    assert evaluate(model, test.images, test.labels) == pytest.approx(
        card["test_accuracy"], abs=1e-4
    )


def test_same_seed_same_weights_on_cpu(trained, tmp_path):
    _, first = trained
    res = train(
        "--model",
        "small_cnn",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    )
    assert res.exit_code == 0, res.output
    a, b = load_file(str(first)), load_file(str(tmp_path / "small_cnn_digits.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = train(
        "--model",
        "small_cnn",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--seed",
        "6",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "other.safetensors"),
    )
    c = load_file(str(tmp_path / "other.safetensors"))
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_resnet20_tiny_limit_with_augmentation(tmp_path):
    res = train(
        "--model",
        "resnet20",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--limit",
        "64",
        "--batch-size",
        "32",
        "--augment",
        "crop+flip",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r.safetensors"),
    )
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "r.json").read_text())
    assert card["recipe"]["train_examples"] == 64 and card["recipe"]["optimizer"] == "sgd"
    assert card["recipe"]["augment"] == "crop+flip"
    recipe = MODELS.get("resnet20").recipe  # unset flags come from the model's registry entry
    assert recipe is not None and card["recipe"]["lr"] == recipe.lr
    assert card["recipe"]["weight_decay"] == recipe.weight_decay
    assert card["architecture"]["config"]["shortcut"] == "A"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnt20"], "did you mean resnet20"),
        (["--dataset", "fashion-mnst"], "did you mean fashion-mnist"),
        (["--model", "torchvision:resnet18"], "trains zoo models"),
        (["--lr", "-1"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--optimizer", "lbfgs"], "--optimizer"),
        (["--augment", "mixup"], "--augment"),
        (["--out", "weights.pt"], ".safetensors"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    res = train("--dataset", "digits", "--epochs", "1", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_missing_data_names_the_expected_path(tmp_path):
    res = train("--dataset", "mnist", "--data-dir", str(tmp_path))
    assert res.exit_code == 2
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in res.stderr


def test_list_models_and_datasets():
    for kind, names in (
        ("models", ["resnet20", "small_cnn", "torchvision", "timm", "robustbench"]),
        ("datasets", ["fashion-mnist", "mnist", "cifar10", "digits", "imagefolder"]),
    ):
        res = runner.invoke(app, ["list", kind, "--markdown"])
        assert res.exit_code == 0, res.output
        for name in names:
            assert f"`{name}`" in res.stdout
