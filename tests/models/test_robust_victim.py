"""The shipped robust victims (small_cnn_robust, resnet20_robust): selectable by name, each
card's recipe and accuracies reproduce on the bundled images, and each is far more robust to
white-box PGD than its plain counterpart."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.data import load_bundled_fashion_mnist
from zoattack.models import create_model, evaluate
from zoattack.models.training import robust_accuracy
from zoattack.models.weights import file_sha256, load_card, weights_dir

pytestmark = pytest.mark.usefixtures("one_thread")


# name -> (architecture class, the plain model it is compared with)
ROBUST = {
    "small_cnn_robust": ("SmallCNN", "small_cnn"),
    "resnet20_robust": ("ResNet20", "resnet20"),
}


@pytest.fixture(scope="module")
def card():
    return load_card("small_cnn_robust", "fashion-mnist")


@pytest.mark.parametrize("name", list(ROBUST))
def test_card_records_the_adversarial_recipe_and_train_split(name):
    card = load_card(name, "fashion-mnist")
    adv = card["recipe"]["adversarial"]
    assert adv["method"] == "pgd" and adv["norm"] == "linf" and adv["eps"] == 0.1
    assert card["recipe"]["train_examples"] == 60000  # the train split, not the bundled test images
    assert card["architecture"]["class"] == ROBUST[name][0]
    rob = card["robust_accuracy"]
    assert rob["examples"] == 1000 and rob["norm"] == "linf" and rob["eps"] == 0.1
    assert 0.5 < rob["accuracy"] < card["test_accuracy"]
    path = weights_dir() / f"{name}_fashion-mnist.safetensors"
    assert file_sha256(path) == card["sha256"]
    assert path.stat().st_size < 2_000_000


@pytest.mark.parametrize("name", list(ROBUST))
def test_loads_by_name_and_reproduces_its_card(name):
    card = load_card(name, "fashion-mnist")
    data = load_bundled_fashion_mnist()
    net = create_model(name, dataset="fashion-mnist", pretrained=True)
    acc = evaluate(net, data.images, data.labels)
    assert acc == pytest.approx(card["test_accuracy_first_1000"], abs=0.003)


@pytest.mark.parametrize("name", list(ROBUST))
def test_much_more_robust_than_the_plain_victim(name):
    data = load_bundled_fashion_mnist(200)
    kw = dict(norm="linf", eps=0.1, steps=10)
    robust = create_model(name, dataset="fashion-mnist", pretrained=True)
    plain = create_model(ROBUST[name][1], dataset="fashion-mnist", pretrained=True)
    r_robust = robust_accuracy(
        robust, data.images, data.labels, **kw, generator=torch.Generator().manual_seed(0)
    )
    r_plain = robust_accuracy(
        plain, data.images, data.labels, **kw, generator=torch.Generator().manual_seed(0)
    )
    assert r_robust > r_plain + 0.3, (r_plain, r_robust)


def test_list_models_shows_clean_and_robust_accuracy(card):
    res = CliRunner().invoke(app, ["list", "models", "--markdown"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.stdout.splitlines() if "`small_cnn_robust`" in line)
    assert f"clean {card['test_accuracy']:.1%}" in row
    assert f"robust {card['robust_accuracy']['accuracy']:.1%}" in row
