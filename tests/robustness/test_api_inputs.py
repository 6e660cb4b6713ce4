"""Malformed input to `zoattack.attack`, `zoattack.load_adversarial` and `zoattack verify`:
each case raises the project's error with one line (the CLI: exit 2, no traceback), and
nothing is scored past what the case needs."""

from __future__ import annotations

import math

import pytest
import torch

import zoattack
from zoattack.errors import ZOAttackError

N = 3


@pytest.fixture(scope="module")
def batch(victim):
    from zoattack.data import load_dataset

    d = load_dataset("fashion-mnist", split="test", limit=N)
    return d.images, d.labels


def _nan_model(victim):
    return lambda x: victim(x) * math.nan


BAD_CALLS = {
    # images
    "images 3-D": lambda m, x, y: zoattack.attack(m, x[0], y[:1]),
    "images uint8": lambda m, x, y: zoattack.attack(m, (x * 255).to(torch.uint8), y),
    "images NaN": lambda m, x, y: zoattack.attack(m, x * math.nan, y),
    "images above 1": lambda m, x, y: zoattack.attack(m, x * 255, y),
    "images below 0": lambda m, x, y: zoattack.attack(m, x - 1, y),
    "images empty": lambda m, x, y: zoattack.attack(m, x[:0], y[:0]),
    "images a string": lambda m, x, y: zoattack.attack(m, "images.png", y),
    # labels
    "labels too few": lambda m, x, y: zoattack.attack(m, x, y[:-1]),
    "labels float": lambda m, x, y: zoattack.attack(m, x, y.float()),
    "labels negative": lambda m, x, y: zoattack.attack(m, x, y - 10),
    "labels 2-D": lambda m, x, y: zoattack.attack(m, x, y.view(-1, 1).expand(N, 2)),
    "labels past num_classes": lambda m, x, y: zoattack.attack(m, x, y, num_classes=2),
    # the model
    "model not callable": lambda m, x, y: zoattack.attack("small_cnn", x, y),
    "model returns (N,)": lambda m, x, y: zoattack.attack(lambda t: m(t)[:, 0], x, y),
    "model returns one row": lambda m, x, y: zoattack.attack(lambda t: m(t)[:1], x, y),
    "model returns NaN": lambda m, x, y: zoattack.attack(_nan_model(m), x, y),
    "labels model returns floats": lambda m, x, y: zoattack.attack(
        lambda t: m(t).argmax(1).float(), x, y, attack="rays"
    ),
    # attack names and options
    "unknown attack": lambda m, x, y: zoattack.attack(m, x, y, attack="sqaure"),
    "rule as attack": lambda m, x, y: zoattack.attack(m, x, y, attack="lizo"),
    "attack not a string": lambda m, x, y: zoattack.attack(m, x, y, attack=3),
    "norm not a string": lambda m, x, y: zoattack.attack(m, x, y, norm=2),
    "unknown option": lambda m, x, y: zoattack.attack(m, x, y, estimater="sphere"),
    "CLI-only option": lambda m, x, y: zoattack.attack(m, x, y, weights="w.safetensors"),
    "square takes no estimator": lambda m, x, y: zoattack.attack(
        m, x, y, attack="square", estimator="sphere"
    ),
    "hsja takes no lr": lambda m, x, y: zoattack.attack(m, x, y, attack="hsja", lr=0.1),
    "rays takes no subspace": lambda m, x, y: zoattack.attack(
        m, x, y, attack="rays", subspace="tile:7"
    ),
    "unknown estimator": lambda m, x, y: zoattack.attack(m, x, y, attack="zo", estimator="spheer"),
    "wrongly typed option": lambda m, x, y: zoattack.attack(m, x, y, attack="zo", samples="ten"),
    "eps negative": lambda m, x, y: zoattack.attack(m, x, y, eps=-0.1),
    "eps beyond the image": lambda m, x, y: zoattack.attack(m, x, y, norm="l2", eps=100.0),
    "unknown norm": lambda m, x, y: zoattack.attack(m, x, y, norm="l3"),
    "budget 1": lambda m, x, y: zoattack.attack(m, x, y, budget=1),
    "target a list": lambda m, x, y: zoattack.attack(m, x, y, target=[1]),
    "target out of range": lambda m, x, y: zoattack.attack(m, x, y, target=12, num_classes=10),
    "unknown dataset": lambda m, x, y: zoattack.attack(m, x, y, dataset="cifar11"),
    "init_from wrong shape": lambda m, x, y: zoattack.attack(
        m, x, y, attack="hsja", init_from=x[:, :, :5]
    ),
    "init_from on a score attack": lambda m, x, y: zoattack.attack(
        m, x, y, attack="square", init_from=x
    ),
    "labels_only with square": lambda m, x, y: zoattack.attack(
        m, x, y, attack="square", labels_only=True
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_api_input_is_one_line_of_the_projects_error(case, victim, batch, corpus):
    corpus.add("api call")
    images, labels = batch
    with pytest.raises(ZOAttackError) as info:
        BAD_CALLS[case](victim, images, labels)
    message = str(info.value)
    assert message and "\n" not in message, message
    assert "Traceback" not in message


def test_attack_spec_given_a_module_says_what_to_call(victim):
    from zoattack.jobs.attack import AttackSpec

    with pytest.raises(ValueError, match=r"zoattack\.attack\(model, images, labels\)"):
        AttackSpec(model=victim).resolved()  # type: ignore[arg-type]


# ------------------------------------------------------------------ adversarial-example files
def _good_file(tmp_path, victim, batch):
    images, labels = batch
    r = zoattack.attack(victim, images, labels, attack="square", budget=10)
    return r.save(tmp_path / "good.safetensors")


def _corrupt(kind, good, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    raw = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        save_file({"weight": torch.zeros(3)}, str(path))
    elif kind == "wrong-format":
        save_file({"x_adv": torch.zeros(1, 1, 2, 2)}, str(path), metadata={"format": "other/9"})
    elif kind == "missing-tensor":
        from zoattack.adversarial import load_adversarial

        t = load_adversarial(good).tensors()
        del t["success"]
        save_file(t, str(path), metadata={"format": "zoattack.adversarial/1"})
    elif kind == "ragged":
        from zoattack.adversarial import load_adversarial

        t = load_adversarial(good).tensors()
        t["queries"] = t["queries"][:1].contiguous()
        save_file(t, str(path), metadata={"format": "zoattack.adversarial/1"})
    return path


KINDS = ("truncated", "garbage", "empty", "foreign", "wrong-format", "missing-tensor", "ragged")


def test_malformed_adversarial_files_are_refused(tmp_path, victim, batch, corpus, zo_cli):
    from zoattack.adversarial import load_adversarial

    good = _good_file(tmp_path, victim, batch)
    for kind in KINDS:
        corpus.add("adversarial file")
        path = _corrupt(kind, good, tmp_path)
        with pytest.raises(ZOAttackError) as info:
            load_adversarial(path)
        assert "\n" not in str(info.value), (kind, info.value)
        res = zo_cli("verify", str(path), "--model", "small_cnn", "--dataset", "fashion-mnist")
        assert res.exit_code == 2, (kind, res.output)
    for argv in (
        [str(tmp_path / "nothing-here")],
        [str(tmp_path)],  # a folder with no run and no examples
        [str(good)],  # made from Python: verify needs --model
        [str(good), "--model", "small_cnn"],  # ...and --dataset
    ):
        corpus.add("verify argument")
        res = zo_cli("verify", *argv)
        assert res.exit_code == 2, (argv, res.output)
