"""Model cards as a library call (zoattack.models.card), without `zoattack train`."""

from __future__ import annotations

import json
import shlex

import torch

from zoattack.data import load_dataset
from zoattack.models import count_parameters, create_model
from zoattack.models.card import PAPERS, build_model_card, train_command_line
from zoattack.models.training import TrainRecipe

RECIPE = TrainRecipe(epochs=2, lr=3e-3, batch_size=64, optimizer="adam").validate().as_dict()


def _card(model: str = "small_cnn", **kw: object) -> dict:
    data = load_dataset("digits", split="test", limit=16)
    net = create_model(model, dataset=data, generator=torch.Generator().manual_seed(0))
    args = dict(
        model=model,
        dataset="digits",
        net=net,
        image_shape=data.image_shape,
        classes=data.classes,
        recipe=RECIPE,
        train_examples=100,
        train_source="sklearn",
        seed=5,
        test_accuracy=0.912345678,
        test_examples=16,
        test_source="sklearn",
        history=[{"epoch": 1, "train_loss": 0.5}],
        train_seconds=12.345,
        device="cpu",
        command=train_command_line(model, "digits", RECIPE, 5, limit=100, threads=1),
        version="9.9",
        date="2026-11-30T00:00:00+00:00",
    )
    args.update(kw)
    return build_model_card(**args)  # type: ignore[arg-type]


def test_card_records_the_weights_and_how_to_reproduce_them():
    card = _card()
    assert card["model"] == "small_cnn" and card["dataset"] == "digits"
    assert card["architecture"]["config"] and "paper" not in card["architecture"]
    assert card["input"] == {
        "shape": [1, 8, 8],
        "range": [0.0, 1.0],
        "normalization": "inside the model (first layer)",
    }
    assert card["recipe"]["epochs"] == 2 and card["recipe"]["train_examples"] == 100
    assert card["test_accuracy"] == 0.91235 and card["train_seconds"] == 12.3
    assert "test_accuracy_first_1000" not in card
    assert card["zoattack_version"] == "9.9" and card["torch_version"] == torch.__version__
    json.dumps(card)  # a plain JSON document
    words = shlex.split(card["command"])
    assert words[:2] == ["zoattack", "train"]
    opts = dict(zip(words[2::2], words[3::2], strict=True))
    assert opts["--epochs"] == "2" and opts["--lr"] == "0.003" and opts["--seed"] == "5"
    assert opts["--limit"] == "100" and opts["--threads"] == "1" and "--test-limit" not in opts


def test_card_names_the_paper_and_the_first_1000_accuracy():
    card = _card("resnet20", test_accuracy_first_1000=0.5)
    assert card["architecture"]["paper"] == PAPERS["resnet20"]
    assert card["test_accuracy_first_1000"] == 0.5
    data = load_dataset("digits", split="test", limit=4)
    net = create_model("resnet20", dataset=data, generator=torch.Generator().manual_seed(0))
    assert card["param_count"] == count_parameters(net)
