"""train_defense on tiny data: query accounting, resume, first-order reference, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from zoattack.blackbox import BlackBox
from zoattack.defense.model import DefendedClassifier, defended_model, load_front
from zoattack.defense.train import DefenseConfig, train_defense
from zoattack.errors import ZOAttackError
from zoattack.seeding import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 8, 8)


def _victim():
    gen = make_generator(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in clf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return clf.eval()


def _images(n=12):
    return torch.rand(n, *SHAPE, generator=make_generator(9))


def _cfg(**kw):
    base = {
        "method": "zo-ae-ds",
        "latent": 6,
        "ae_epochs": 2,
        "epochs": 2,
        "batch_size": 5,
        "denoiser_depth": 3,
        "denoiser_width": 4,
        "seed": 3,
    }
    return DefenseConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "estimator, samples, per_image_step",
    [
        ("coordinate", None, 7),  # f(z) + 6 coordinates (forward differences share f(z))
        ("sphere", 3, 4),
    ],
)
def test_query_counts_reported_equal_the_ledger(tmp_path, estimator, samples, per_image_step):
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    card = train_defense(_cfg(estimator=estimator, samples=samples), bb, _images(), tmp_path)
    assert card["queries"]["train_blackbox"] == bb.total_queries
    # 1 pseudo-label query per image, then per epoch and image the bridge's cost.
    assert bb.total_queries == 12 + 2 * 12 * per_image_step
    assert bb.queries.tolist() == [1 + 2 * per_image_step] * 12
    assert sum(h["queries"] for h in card["history"] if h["stage"] == 2) == 2 * 12 * per_image_step
    on_disk = json.loads((tmp_path / "defense.json").read_text())
    assert on_disk["queries"] == card["queries"] and on_disk["complete"]


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    cfg = _cfg(epochs=3, ae_epochs=2, estimator="sphere", samples=2)
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    ref = train_defense(cfg, bb, _images(), tmp_path / "ref")

    class Stop(Exception):
        pass

    seen = []

    def stop_after(row):  # interrupt once in stage 1 and once in stage 2
        seen.append((row["stage"], row["epoch"]))
        if (row["stage"], row["epoch"]) in ((1, 1), (2, 2)):
            raise Stop

    for resume in (False, True, True):
        bb2 = BlackBox(_victim(), output="logits", input_shape=SHAPE)
        try:
            got = train_defense(
                cfg, bb2, _images(), tmp_path / "cut", resume=resume, on_epoch=stop_after
            )
        except Stop:
            continue
    assert seen == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]  # nothing redone
    a = load_file(str(tmp_path / "ref" / "defense.safetensors"))
    b = load_file(str(tmp_path / "cut" / "defense.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert got["queries"] == ref["queries"]
    assert [h["loss"] for h in got["history"]] == [h["loss"] for h in ref["history"]]


def test_extending_epochs_with_resume_and_refusing_changed_settings(tmp_path):
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    train_defense(_cfg(epochs=1, estimator="sphere", samples=2), bb, _images(), tmp_path)
    with pytest.raises(ValueError, match="pass --resume"):
        train_defense(_cfg(epochs=1, estimator="sphere", samples=2), bb, _images(), tmp_path)
    with pytest.raises(ValueError, match="--resume with different settings: sigma"):
        train_defense(
            _cfg(epochs=2, sigma=0.5, estimator="sphere", samples=2),
            bb,
            _images(),
            tmp_path,
            resume=True,
        )
    card = train_defense(
        _cfg(epochs=2, estimator="sphere", samples=2), bb, _images(), tmp_path, resume=True
    )
    assert card["epochs_done"] == 2


def test_first_order_reference_and_zo_ds(tmp_path):
    model = _victim()
    bb = BlackBox(model, output="logits", input_shape=SHAPE)
    card = train_defense(
        _cfg(method="fo-ds", epochs=1), bb, _images(), tmp_path / "fo", white_box=model
    )
    assert card["queries"] == {**card["queries"], "train_blackbox": 12, "whitebox_evaluations": 12}
    assert card["architecture"]["autoencoder"] is None
    bb = BlackBox(model, output="logits", input_shape=SHAPE)
    card = train_defense(
        _cfg(method="zo-ds", epochs=1, estimator="sphere", samples=2),
        bb,
        _images(),
        tmp_path / "zo",
    )
    assert bb.total_queries == 12 + 12 * 3
    with pytest.raises(ValueError, match="needs white_box"):
        train_defense(_cfg(method="fo-ae-ds"), bb, _images(), tmp_path / "x")


def test_labels_only_black_box_cannot_train(tmp_path):
    bb = BlackBox(_victim(), output="labels", input_shape=SHAPE)
    with pytest.raises(ZOAttackError, match="returns scores"):
        train_defense(_cfg(), bb, _images(), tmp_path)


def test_trained_front_reloads(tmp_path):
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    train_defense(_cfg(epochs=1, estimator="sphere", samples=2), bb, _images(), tmp_path)
    front, card = load_front(tmp_path)
    assert card["method"] == "zo-ae-ds" and front.encoder is not None
    x = _images(3)
    y = front(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    with pytest.raises(ValueError, match="records no black box"):
        defended_model(str(tmp_path))
    assert isinstance(DefendedClassifier(front, _victim())(x), torch.Tensor)


def test_validation_split_keeps_the_best_epoch_and_resumes_exactly(tmp_path):
    """--val-images: the last V images are held out (never trained on, V queries per epoch),
    defense.safetensors holds the best validation epoch's weights, and an interrupted run
    resumes to the same weights, history and ledger."""
    cfg = _cfg(epochs=3, estimator="sphere", samples=2, val_images=4)
    labels = torch.arange(12) % 4
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    card = train_defense(cfg, bb, _images(), tmp_path / "ref", labels=labels)
    rows = [h for h in card["history"] if h["stage"] == 2]
    accs = [h["val_accuracy"] for h in rows]
    sel = card["selection"]
    assert sel["val_images"] == 4 and sel["reference"] == "labels"
    assert sel["best_val_accuracy"] == max(accs)
    assert sel["best_epoch"] == accs.index(max(accs)) + 1
    # 8 training images: 1 pseudo-label each + 3 epochs x (1 + q=2); 4 held out: 1 per epoch.
    assert bb.queries.tolist() == [1 + 3 * 3] * 8 + [3] * 4
    assert card["config"]["val_images"] == 4
    # The kept weights are the best epoch's, not necessarily the last's.
    best = load_file(str(tmp_path / "ref" / "defense.safetensors"))

    class Stop(Exception):
        pass

    def stop_at_2(row):
        if (row["stage"], row["epoch"]) == (2, 2):
            raise Stop

    bb2 = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    with pytest.raises(Stop):
        train_defense(cfg, bb2, _images(), tmp_path / "cut", labels=labels, on_epoch=stop_at_2)
    bb3 = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    got = train_defense(cfg, bb3, _images(), tmp_path / "cut", labels=labels, resume=True)
    assert got["selection"] == sel and got["queries"] == card["queries"]
    again = load_file(str(tmp_path / "cut" / "defense.safetensors"))
    assert best.keys() == again.keys() and all(torch.equal(best[k], again[k]) for k in best)
    with pytest.raises(ValueError, match="leaves no training images"):
        train_defense(_cfg(val_images=12), bb, _images(), tmp_path / "bad")


def test_without_the_new_options_the_config_is_unchanged():
    """Cards and checkpoints written before --val-images/--augment existed still resume."""
    d = _cfg().as_dict()
    assert "val_images" not in d and "augment" not in d
    assert _cfg(augment="flip").as_dict()["augment"] == "flip"
    with pytest.raises(ValueError, match="--augment must be one of"):
        _cfg(augment="rotate").validate()


def test_augmentation_requeries_pseudo_labels(tmp_path):
    """With augmentation each step asks the black box for the augmented image's top-1."""
    from zoattack.defense.train import augment_images

    x = _images(4)
    flipped = augment_images(x, "flip", make_generator(0))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))
    cropped = augment_images(x, "crop", make_generator(0))
    assert cropped.shape == x.shape and not torch.equal(cropped, x)
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    train_defense(_cfg(estimator="sphere", samples=2, augment="crop+flip"), bb, _images(), tmp_path)
    assert bb.queries.tolist() == [1 + 2 * (1 + 3)] * 12


def test_autoencoder_pretrains_on_its_own_images_without_queries(tmp_path):
    """ae_images: stage 1 sees more images (white-box, free); stage 2's queries are unchanged."""
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    cfg = _cfg(estimator="sphere", samples=2, epochs=1)
    card = train_defense(cfg, bb, _images(), tmp_path / "a", ae_images=_images(30))
    assert card["autoencoder_pretraining_images"] == 30
    assert bb.queries.tolist() == [1 + 3] * 12
    with pytest.raises(ValueError, match="ae_images must be"):
        train_defense(cfg, bb, _images(), tmp_path / "b", ae_images=torch.rand(3, 2, 8, 8))
    assert not (tmp_path / "b").exists()
