"""Adversarial training (PGD, TRADES) on scikit-learn digits: validation, the recorded recipe,
robustness it buys, and per-epoch resume giving the weights of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from zoattack.data import load_dataset
from zoattack.models import create_model
from zoattack.models.training import TrainRecipe, evaluate, robust_accuracy, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _net(train, seed: int = 0):
    return create_model("small_cnn", dataset=train, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"adv_method": "pgd", "adv_eps": 0.0}, "--adv-eps"),
        ({"adv_method": "pgd", "adv_eps": -0.1}, "--adv-eps"),
        ({"adv_method": "pgd", "adv_eps": 1.0}, "--adv-eps.*whole"),
        ({"adv_method": "pgd", "adv_eps": 0.1, "adv_steps": 0}, "--adv-steps"),
        ({"adv_method": "pgd", "adv_eps": 0.1, "adv_norm": "l1"}, "--adv-norm"),
        ({"adv_method": "trades", "adv_eps": 0.1, "trades_beta": 0}, "--trades-beta"),
        ({"adv_method": "pgd", "adv_eps": 0.1, "adv_step_size": -1.0}, "--adv-step-size"),
        ({"adv_method": "fgsm", "adv_eps": 0.1}, "--adv-method"),
    ],
)
def test_bad_adversarial_recipes_name_their_flag(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainRecipe(**kwargs).validate()


def test_l2_eps_is_bounded_by_the_box_diagonal():
    TrainRecipe(adv_method="pgd", adv_norm="l2", adv_eps=7.9).validate(64)
    with pytest.raises(ValueError, match="diagonal"):
        TrainRecipe(adv_method="pgd", adv_norm="l2", adv_eps=8.0).validate(64)


def test_recipe_card_records_the_attack():
    plain = TrainRecipe().as_dict()
    assert "adversarial" not in plain and plain["loss"] == "cross-entropy"
    assert not any(k.startswith("adv_") or k == "trades_beta" for k in plain)
    pgd = TrainRecipe(adv_method="pgd", adv_eps=0.1, adv_steps=5).as_dict()["adversarial"]
    assert pgd["method"] == "pgd" and pgd["eps"] == 0.1 and pgd["steps"] == 5
    assert pgd["step_size"] == pytest.approx(0.05) and "Madry" in pgd["paper"]
    trades = TrainRecipe(adv_method="trades", adv_eps=0.1, trades_beta=3.0).as_dict()
    assert trades["adversarial"]["beta"] == 3.0 and "TRADES" in trades["loss"]


def test_pgd_training_buys_robustness_that_plain_training_lacks(digits):
    train, test = digits
    eps = 0.15
    recipe = dict(epochs=4, lr=3e-3, batch_size=64)
    plain, robust = _net(train), _net(train)
    train_model(
        plain, train, recipe=TrainRecipe(**recipe), generator=torch.Generator().manual_seed(0)
    )
    train_model(
        robust,
        train,
        recipe=TrainRecipe(**recipe, adv_method="pgd", adv_eps=eps, adv_steps=3),
        generator=torch.Generator().manual_seed(0),
    )
    kw = dict(norm="linf", eps=eps, steps=10)
    r_plain = robust_accuracy(
        plain, test.images, test.labels, **kw, generator=torch.Generator().manual_seed(1)
    )
    r_robust = robust_accuracy(
        robust, test.images, test.labels, **kw, generator=torch.Generator().manual_seed(1)
    )
    assert evaluate(robust, test.images, test.labels) > 0.6
    assert r_robust > r_plain + 0.15, (r_plain, r_robust)
    assert r_robust <= evaluate(robust, test.images, test.labels)


def test_trades_trains_and_stays_finite(digits):
    train, _ = digits
    net = _net(train)
    res = train_model(
        net,
        train.head(256),
        recipe=TrainRecipe(
            epochs=1, lr=3e-3, batch_size=64, adv_method="trades", adv_eps=0.1, adv_steps=2
        ),
        generator=torch.Generator().manual_seed(0),
    )
    assert len(res.history) == 1 and res.history[0]["train_loss"] > 0


class Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["pgd", "none"])
def test_resume_after_an_epoch_gives_the_uninterrupted_weights(digits, tmp_path, method):
    train, _ = digits
    train = train.head(300)
    recipe = TrainRecipe(
        epochs=3,
        lr=3e-3,
        batch_size=64,
        adv_method=method,
        adv_eps=0.1 if method != "none" else 0.0,
        adv_steps=2,
    )
    full = _net(train)
    train_model(full, train, recipe=recipe, generator=torch.Generator().manual_seed(7))

    ckpt = tmp_path / "run.ckpt.pt"

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Stop  # the checkpoint of epoch 2 is already on disk

    with pytest.raises(Stop):
        train_model(
            _net(train),
            train,
            recipe=recipe,
            generator=torch.Generator().manual_seed(7),
            checkpoint=ckpt,
            on_epoch=stop_after_two,
        )
    assert ckpt.is_file()
    resumed = _net(train, seed=99)  # different init: everything must come from the checkpoint
    res = train_model(
        resumed,
        train,
        recipe=recipe,
        generator=torch.Generator().manual_seed(12345),
        checkpoint=ckpt,
        resume=True,
    )
    assert res.resumed_from_epoch == 2 and [r["epoch"] for r in res.history] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_refuses_a_checkpoint_of_another_recipe(digits, tmp_path):
    train, _ = digits
    train = train.head(128)
    ckpt = tmp_path / "c.ckpt.pt"
    r1 = TrainRecipe(epochs=1, batch_size=64)
    train_model(
        _net(train), train, recipe=r1, generator=torch.Generator().manual_seed(0), checkpoint=ckpt
    )
    r2 = TrainRecipe(epochs=1, batch_size=64, lr=5e-3)
    with pytest.raises(ValueError, match="another recipe"):
        train_model(
            _net(train),
            train,
            recipe=r2,
            generator=torch.Generator().manual_seed(0),
            checkpoint=ckpt,
            resume=True,
        )
