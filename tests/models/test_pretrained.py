"""Shipped weights, model cards and checkpoint files for zoo models (offline)."""

from __future__ import annotations

import pytest
import torch

from zoattack.data import load_bundled_fashion_mnist
from zoattack.data.files import MissingFileError
from zoattack.models import (
    count_parameters,
    create_model,
    evaluate,
    load_card,
    read_card,
    save_weights,
    shipped_weights,
    weights_dir,
)
from zoattack.models.weights import file_sha256
from zoattack.seeding import make_generator

SHIPPED = [("resnet20", "fashion-mnist"), ("small_cnn", "fashion-mnist")]
VIEWS = [("resnet20", "fashion-mnist@3x32x32")]


@pytest.fixture(scope="module")
def bundled():
    return load_bundled_fashion_mnist()


def test_both_fashion_mnist_models_ship():
    # The robust victim has its own tests (test_robust_victim.py).
    robust = [("small_cnn_robust", "fashion-mnist"), ("resnet20_robust", "fashion-mnist")]
    # The 3x32x32 view's victim (issue 15, benchmarks/defense.py --dim 3072).
    view = [("resnet20", "fashion-mnist@3x32x32")]
    assert sorted(shipped_weights()) == sorted(SHIPPED + robust + view)


@pytest.mark.parametrize("name, dataset", SHIPPED)
def test_card_is_complete_and_matches_the_file(name, dataset):
    card = load_card(name, dataset)
    for key in (
        "dataset",
        "architecture",
        "recipe",
        "seed",
        "test_accuracy",
        "test_examples",
        "param_count",
        "torch_version",
        "date",
        "command",
        "history",
    ):
        assert key in card, key
    for key in ("optimizer", "lr", "epochs", "batch_size", "augment", "schedule"):
        assert key in card["recipe"], key
    assert card["model"] == name and card["dataset"] == dataset
    assert card["test_examples"] == 10_000  # measured on the full test set
    assert len(card["history"]) == card["recipe"]["epochs"]
    path = weights_dir() / f"{name}_{dataset}.safetensors"
    assert card["sha256"] == file_sha256(path)
    model = create_model(name, dataset=dataset, pretrained=True)
    assert count_parameters(model) == card["param_count"]


@pytest.mark.parametrize("name, dataset", SHIPPED)
def test_shipped_weights_reach_card_accuracy_on_bundled_subset(name, dataset, bundled):
    card = load_card(name, dataset)
    model = create_model(name, dataset=dataset, pretrained=True)
    acc = evaluate(model, bundled.images, bundled.labels)
    # The card also records the accuracy on exactly these 1,000 images.
    assert acc == pytest.approx(card["test_accuracy_first_1000"], abs=0.003)
    assert acc >= card["test_accuracy"] - 0.05
    floor = {"resnet20": 0.90, "small_cnn": 0.88}[name]
    assert card["test_accuracy"] >= floor


def test_pretrained_needs_a_dataset_and_existing_weights():
    with pytest.raises(ValueError, match="dataset="):
        create_model("resnet20", pretrained=True)
    with pytest.raises(MissingFileError) as info:
        create_model("resnet20", dataset="cifar10", pretrained=True)
    msg = str(info.value)
    assert "resnet20_cifar10.safetensors" in msg and "zoattack train" in msg


def test_model_dir_overrides_shipped_weights(tmp_path):
    mine = create_model("small_cnn", dataset="digits", generator=make_generator(7))
    save_weights(
        mine,
        tmp_path / "small_cnn_digits.safetensors",
        {"model": "small_cnn", "dataset": "digits", "architecture": {"config": mine.config()}},
    )
    loaded = create_model("small_cnn", dataset="digits", pretrained=True, model_dir=tmp_path)
    for k, v in mine.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_weights_with_card_rebuild_the_exact_architecture(tmp_path):
    src = create_model("resnet20", dataset="cifar10", shortcut="B", generator=make_generator(1))
    path, card_file = save_weights(
        src,
        tmp_path / "w.safetensors",
        {"model": "resnet20", "dataset": "cifar10", "architecture": {"config": src.config()}},
    )
    assert read_card(path)["architecture"]["config"]["shortcut"] == "B"
    model = create_model("resnet20", weights=path)  # shortcut and shapes come from the card
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    with pytest.raises(ValueError, match="holds resnet20 weights"):
        create_model("small_cnn", weights=path)
    card_file.unlink()  # the safetensors metadata carries a copy of the card
    again = create_model("resnet20", weights=path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), src(x))


def test_plain_torch_checkpoint_loads_with_weights_only(tmp_path):
    src = create_model("small_cnn", dataset="digits", generator=make_generator(2))
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"model": state}, tmp_path / "c.pt")
    model = create_model("small_cnn", dataset="digits", weights=tmp_path / "c.pt")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    with pytest.raises(ValueError, match="do not fit small_cnn"):
        create_model("small_cnn", dataset="fashion-mnist", weights=tmp_path / "c.pt")


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(MissingFileError, match=str(tmp_path / "gone.safetensors")):
        create_model("resnet20", dataset="digits", weights=tmp_path / "gone.safetensors")


@pytest.mark.parametrize("name, dataset", VIEWS)
def test_shipped_view_victim_matches_its_card(name, dataset):
    from zoattack.data import load_dataset

    card = load_card(name, dataset)
    path = weights_dir() / f"{name}_{dataset}.safetensors"
    assert card["sha256"] == file_sha256(path)
    assert card["model"] == name and card["dataset"] == dataset
    assert card["input"]["shape"] == [3, 32, 32]
    model = create_model(name, dataset=dataset, pretrained=True)
    assert count_parameters(model) == card["param_count"]
    data = load_dataset(dataset, split="test", limit=1000)  # the bundled 1,000, viewed
    assert tuple(data.images.shape[1:]) == (3, 32, 32)
    acc = evaluate(model, data.images, data.labels)
    assert acc == pytest.approx(card["test_accuracy_first_1000"], abs=0.003)
