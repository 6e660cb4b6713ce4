"""Malformed-input corpus, sizes (issue 24, items 6 and 7): data that does not fit the weights,
sizes past memory, cards with wrong types.

Every case is one line and exit 2 with nothing written, so the corrected command runs; no
test allocates more than a few megabytes (refusals are checked against the estimates, under
a ZOATTACK_MAX_MEMORY the test sets).
"""

from __future__ import annotations

import json
import shutil

import pytest

from zoattack.models.weights import weights_dir

RUN = ["run", "--images", "1", "--budget", "4", "--device", "cpu", "--chunk-size", "1"]
DEFEND = ["defend", "train", "--train-images", "8", "--epochs", "1", "--ae-epochs", "1",
          "--latent", "8", "--denoiser-depth", "2", "--denoiser-width", "4", "-q", "2",
          "--device", "cpu", "--threads", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def fixed_limit(monkeypatch):
    """The same limit on every machine (the default is the machine's memory)."""
    monkeypatch.setenv("ZOATTACK_MAX_MEMORY", "16G")


@pytest.fixture
def grey_weights(tmp_path):
    """small_cnn weights for 1x28x28 Fashion-MNIST, with their card, outside the package."""
    for ext in (".safetensors", ".json"):
        shutil.copy(weights_dir() / f"small_cnn_fashion-mnist{ext}", tmp_path / f"w{ext}")
    return tmp_path / "w.safetensors"


def one_line(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_run_view_whose_channels_do_not_fit_writes_nothing(tmp_path, grey_weights, zo_cli, corpus):
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--dataset", "fashion-mnist@3x28x28", "--weights", str(grey_weights),
                 "--out", str(out))  # fmt: skip
    line = one_line(res, "cannot take fashion-mnist@3x28x28 images (3x28x28)", "1x28x28")
    assert "--dataset fashion-mnist@1x28x28" in line
    assert not out.exists()
    # The corrected command is not refused by what the failed one left behind.
    res = zo_cli(*RUN, "--dataset", "fashion-mnist", "--weights", str(grey_weights),
                 "--out", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    corpus.add("sizes")


def test_run_prior_whose_channels_do_not_fit(tmp_path, grey_weights, zo_cli, corpus):
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--model", "resnet20", "--dataset", "fashion-mnist@3x32x32", "--optimizer",
                 "zo_sgd", "--prior", "small_cnn", "--prior-weights", str(grey_weights),
                 "--out", str(out))  # fmt: skip
    one_line(res, "--prior small_cnn", "--prior-weights")
    assert not out.exists()
    corpus.add("sizes")


def test_defend_train_view_whose_channels_do_not_fit(tmp_path, grey_weights, zo_cli, corpus):
    out = tmp_path / "def"
    res = zo_cli(*DEFEND, "--dataset", "fashion-mnist@3x28x28", "--weights", str(grey_weights),
                 "--out", str(out))  # fmt: skip
    one_line(res, "cannot take fashion-mnist@3x28x28 images")
    assert not out.exists()
    corpus.add("sizes")


def test_train_past_memory_is_refused_before_loading(tmp_path, zo_cli, corpus):
    out = tmp_path / "t" / "m.safetensors"
    res = zo_cli("train", "--dataset", "fashion-mnist@3x1024x1024", "--out", str(out))
    line = one_line(res, "training small_cnn on fashion-mnist@3x1024x1024", "--batch-size",
                    "ZOATTACK_MAX_MEMORY=", "16 GiB allowed")  # fmt: skip
    assert "GiB of memory (parameters" in line
    assert not out.parent.exists()
    corpus.add("sizes")


def test_view_past_memory_is_refused_before_resampling(tmp_path, zo_cli, corpus, monkeypatch):
    monkeypatch.setenv("ZOATTACK_MAX_MEMORY", "512M")
    out = tmp_path / "run"
    res = zo_cli(*RUN[:1], "--images", "1000", "--budget", "4", "--device", "cpu",
                 "--dataset", "fashion-mnist@3x256x256", "--out", str(out))  # fmt: skip
    one_line(res, "loading 1,000 fashion-mnist@3x256x256 images", "--images")
    assert not out.exists()
    corpus.add("sizes")


def test_optimize_past_memory(zo_cli, corpus):
    res = zo_cli("optimize", "--function", "rosenbrock", "--dim", "100000000")
    one_line(res, "--dim 100,000,000", "ZOATTACK_MAX_MEMORY=")
    corpus.add("sizes")


@pytest.mark.parametrize("value", ["x", "-3G", "12Q"])
def test_bad_memory_limit_is_one_line(tmp_path, zo_cli, corpus, monkeypatch, value):
    monkeypatch.setenv("ZOATTACK_MAX_MEMORY", value)
    res = zo_cli("optimize", "--dim", "8", "--budget", "10")
    one_line(res, "ZOATTACK_MAX_MEMORY=")
    corpus.add("sizes")


def test_card_asking_for_a_huge_model(tmp_path, grey_weights, zo_cli, corpus):
    card = grey_weights.with_suffix(".json")
    doc = json.loads(card.read_text())
    doc["architecture"]["config"]["hidden"] = 300_000
    card.write_text(json.dumps(doc))
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--weights", str(grey_weights), "--out", str(out))
    one_line(res, "do not fit", "w.json", "(300000, 3136)")
    assert not out.exists()
    corpus.add("sizes")


CARD_TYPES = [
    ("model", 5),
    ("model", ["small_cnn"]),
    ("dataset", 7),
    ("dataset", {"name": "fashion-mnist"}),
    ("architecture", [1]),
    ("classes", "abc"),
    ("classes", [1, 2]),
    ("input", 3),
    ("config", [1]),
    ("config", {"in_channels": "1"}),
    ("config", {"hidden": "128"}),
    ("config", {"mean": "0.5"}),
    ("config", {"input_size": ["a", "b"]}),
    ("config", {"hidden": 10**30}),
]


@pytest.mark.parametrize("key, value", CARD_TYPES)
def test_card_with_wrong_types_names_the_card(tmp_path, grey_weights, zo_cli, corpus, key, value):
    card = grey_weights.with_suffix(".json")
    doc = json.loads(card.read_text())
    if key == "config" and isinstance(value, dict):
        doc["architecture"]["config"].update(value)
    elif key == "config":
        doc["architecture"]["config"] = value
    else:
        doc[key] = value
    card.write_text(json.dumps(doc))
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--weights", str(grey_weights), "--out", str(out))
    one_line(res, "w.json")
    assert not out.exists()
    corpus.add("sizes")
