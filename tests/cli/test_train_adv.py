"""`zoattack train` with adversarial training on digits: the card's recipe and robust accuracy,
resume, robust zoo names, and bad input (one line, exit 2)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.models import create_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
BASE = ("train", "--model", "small_cnn", "--dataset", "digits", "--device", "cpu", "--lr", "3e-3")
FAST = ("--epochs", "1", "--limit", "256", "--test-limit", "64")


def train(*args: str):
    return runner.invoke(app, [*BASE, *args])


def test_adversarial_card_records_recipe_and_robust_accuracy(tmp_path):
    out = tmp_path / "adv.safetensors"
    res = train(
        *FAST,
        "--adv-eps",
        "0.1",
        "--adv-steps",
        "2",
        "--robust-eval-images",
        "32",
        "--robust-eval-steps",
        "3",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    card = json.loads(out.with_suffix(".json").read_text())
    adv = card["recipe"]["adversarial"]
    assert adv["method"] == "pgd" and adv["eps"] == 0.1 and adv["steps"] == 2
    assert card["recipe"]["loss"] == "cross-entropy on PGD examples"
    rob = card["robust_accuracy"]
    assert rob["examples"] == 32 and rob["norm"] == "linf" and rob["eps"] == 0.1
    assert 0.0 <= rob["accuracy"] <= rob["clean_accuracy"] <= 1.0
    assert "PGD-3" in rob["attack"]
    assert "--adv-method pgd" in card["command"] and "--adv-eps 0.1" in card["command"]
    assert f"{rob['accuracy']:.2%}" in res.stdout
    assert not out.with_name("adv.ckpt.pt").exists()  # the checkpoint goes once weights exist


def test_trades_and_resume_of_a_finished_checkpoint(tmp_path):
    out = tmp_path / "t.safetensors"
    args = (*FAST, "--adv-method", "trades", "--adv-eps", "0.1", "--adv-steps", "1")
    args = (*args, "--robust-eval-images", "0", "--out", str(out))
    res = train(*args)
    assert res.exit_code == 0, res.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["recipe"]["adversarial"]["beta"] == 6.0 and "robust_accuracy" not in card
    res = train(*args, "--resume")
    assert res.exit_code == 2 and "no checkpoint" in res.output


@pytest.mark.parametrize(
    "args,match",
    [
        (("--adv-eps", "0"), "--adv-eps"),
        (("--adv-eps", "-0.2"), "--adv-eps"),
        (("--adv-eps", "1.0"), "whole"),
        (("--adv-norm", "l2", "--adv-eps", "8"), "diagonal"),
        (("--adv-eps", "0.1", "--adv-steps", "0"), "--adv-steps"),
        (("--adv-method", "trades"), "needs --adv-eps"),
        (("--adv-method", "none", "--adv-eps", "0.1"), "--adv-method"),
        (("--adv-method", "fgsm", "--adv-eps", "0.1"), "--adv-method"),
        (("--adv-eps", "0.1", "--robust-eval-steps", "0"), "--robust-eval"),
    ],
)
def test_bad_adversarial_input_is_one_line_exit_2(args, match, tmp_path):
    res = train(*FAST, *args, "--out", str(tmp_path / "x.safetensors"))
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.safetensors").exists()


def test_robust_zoo_name_trains_with_its_threat_model_and_reloads(tmp_path):
    out = tmp_path / "r.safetensors"
    res = runner.invoke(
        app,
        [
            "train",
            "--model",
            "small_cnn_robust",
            "--dataset",
            "digits",
            "--device",
            "cpu",
            *FAST,
            "--adv-steps",
            "1",
            "--robust-eval-images",
            "16",
            "--robust-eval-steps",
            "2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model"] == "small_cnn_robust" and card["architecture"]["class"] == "SmallCNN"
    assert card["recipe"]["adversarial"]["eps"] == 0.1  # from the registry's threat model
    net = create_model(
        "small_cnn_robust", dataset="digits", model_dir=tmp_path, pretrained=False, weights=out
    )
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
