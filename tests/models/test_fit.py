"""zoattack.models.fit: memory estimates, the limit, the shape probe (issue 24, item 6).

Nothing here allocates more than a few megabytes: estimates are checked on meta-device
skeletons and refusals against a small ZOATTACK_MAX_MEMORY.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoattack.models import create_model
from zoattack.models.fit import (
    MEMORY_ENV,
    MemoryLimitError,
    activation_elements,
    check_memory,
    describe_mismatch,
    format_bytes,
    memory_limit,
    optimize_bytes,
    parameter_bytes,
    parse_size,
    probe_input,
    probe_safe,
    safetensors_shapes,
    training_bytes,
    view_bytes,
)
from zoattack.models.zoo import SmallCNN, skeleton


@pytest.mark.parametrize(
    "text, expected",
    [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("2048", 2048),
     ("1t", 2**40), ("3GB", 3 * 2**30), ("off", None), ("none", None), ("0", None)],
)  # fmt: skip
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["x", "-1G", "8Q", "nan", "1e9", "G"])
def test_parse_size_refuses_one_line(text):
    with pytest.raises(ValueError, match=MEMORY_ENV):
        parse_size(text)


def test_limit_from_env_and_default(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "2G")
    assert memory_limit() == (2 * 2**30, f"{MEMORY_ENV}=2G")
    monkeypatch.delenv(MEMORY_ENV)
    limit, source = memory_limit()
    assert source == "this machine's memory" and (limit is None or limit > 2**26)


def test_check_memory_refuses_with_estimate_and_override(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "1G")
    assert check_memory("small", {"a": 2**29, "b": 2**29}) == 2**30
    with pytest.raises(MemoryLimitError) as info:
        check_memory("training x", {"activations": 3 * 2**30, "images": 2**30}, hint="use less")
    msg = str(info.value)
    assert "\n" not in msg and "training x needs about 4 GiB" in msg
    assert "activations 3 GiB, images 1 GiB" in msg and "1 GiB allowed" in msg
    assert "use less, or set ZOATTACK_MAX_MEMORY=5G" in msg
    assert info.value.estimate == 4 * 2**30 and isinstance(info.value, ValueError)
    monkeypatch.setenv(MEMORY_ENV, "off")
    assert check_memory("anything", {"a": 2**80}) == 2**80


def test_format_bytes():
    assert format_bytes(6.5 * 2**30) == "6.5 GiB" and format_bytes(100) == "100 B"
    assert format_bytes(3 * 2**20) == "3 MiB"


def test_skeleton_allocates_nothing_and_counts_parameters():
    with skeleton():
        big = SmallCNN(hidden=300_000)  # the 4.5 GB card of issue 24, as shapes only
    assert all(p.is_meta for p in big.parameters())
    tensors = [*big.parameters(), *big.buffers()]
    assert parameter_bytes(big) == 4 * sum(t.numel() for t in tensors)
    assert parameter_bytes(big) > 3.7e9
    real = SmallCNN(generator=torch.Generator().manual_seed(0))
    with skeleton():
        shell = SmallCNN()
    assert parameter_bytes(shell) == parameter_bytes(real)
    assert {k: v.shape for k, v in shell.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }


def test_activation_elements_by_meta_forward():
    with skeleton():
        shell = SmallCNN(in_channels=1, input_size=28)
    # normalize 784, conv1 32x28x28, conv2 64x14x14, fc1 128, fc2 10 (relu/pool are functional)
    assert activation_elements(shell, (1, 28, 28)) == 784 + 32 * 784 + 64 * 196 + 128 + 10


def test_training_estimate_scales_with_batch_and_view():
    with skeleton():
        small = create_model("small_cnn", dataset="fashion-mnist", device="meta")
        huge = create_model("small_cnn", dataset="fashion-mnist@3x1024x1024", device="meta")
    a = training_bytes(small, (1, 28, 28), 64, "adam")
    b = training_bytes(small, (1, 28, 28), 128, "adam")
    assert b["activations"] == 2 * a["activations"]
    assert training_bytes(small, (1, 28, 28), 64, "sgd")["activations"] == a["activations"]
    big = training_bytes(huge, (3, 1024, 1024), 128, "adam")
    assert sum(big.values()) > 40 * 2**30  # the 6.5 GB blow-up of issue 24 is far past any limit


def test_optimize_and_view_estimates():
    # d = 1e8 with 3 problems: the blow-up of issue 24, estimated from shapes alone.
    assert optimize_bytes(100_000_000, 3, 8) > 100 * 2**30
    assert optimize_bytes(1000, 3, 8) < 2**22
    assert optimize_bytes(10, 1, 20) > optimize_bytes(10, 1, 10)
    assert view_bytes(10, (3, 32, 32), 3) == 10 * 3 * 32 * 32 * 4
    assert view_bytes(10, (3, 32, 32), 1) == 10 * 4 * 32 * 32 * 4  # + the 1-channel resample
    assert view_bytes(60_000, (3, 1024, 1024), 1) > 900 * 2**30


def test_describe_mismatch():
    assert describe_mismatch({"a": (2, 3)}, {"a": [2, 3]}) is None
    text = describe_mismatch({"a": (2, 3), "b": (1,)}, {"a": (4, 3), "c": (1,)})
    assert "1 missing keys (e.g. b)" in text and "1 unexpected keys (e.g. c)" in text
    assert "a (4, 3) vs (2, 3)" in text


def test_safetensors_header_shapes(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(3, 5), "y": torch.zeros(2)}, str(p))
    assert safetensors_shapes(p) == {"x": (3, 5), "y": (2,)}
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 20)
    assert safetensors_shapes(tmp_path / "bad.safetensors") is None


def test_probe_refuses_wrong_channels_in_one_line():
    net = SmallCNN(in_channels=1, generator=torch.Generator().manual_seed(0)).train()
    with pytest.raises(ValueError) as info:
        probe_input(net, (3, 28, 28), what="small_cnn", inputs="RGB images", hint="fix it")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("small_cnn cannot take RGB images: ")
    assert "channels" in msg and msg.endswith("; fix it")
    assert net.training and net.conv1.training  # modes restored
    assert probe_input(net, (1, 28, 28), what="m", inputs="i", hint="h") is True


def test_probe_refuses_outputs_that_are_not_scores():
    class Flat(nn.Module):
        def forward(self, x):
            return x.flatten()

    with pytest.raises(ValueError, match="not one row of class scores"):
        probe_input(Flat(), (1, 4, 4), what="m", inputs="i", hint="h")


def test_probe_leaves_remote_and_stateful_models_alone():
    class Remote(nn.Module):  # what a remote client looks like: it counts what it scores
        scored_inputs = 0

        def forward(self, x):
            self.scored_inputs += len(x)
            raise AssertionError("a probe would have queried the victim")

    class Smoothed(nn.Module):
        stateful_forward = True

        def forward(self, x):
            raise AssertionError("a probe would have advanced the noise")

    wrapped = nn.Sequential(nn.Identity(), Remote())
    assert not probe_safe(wrapped) and not probe_safe(Smoothed())
    assert probe_input(wrapped, (1, 4, 4), what="m", inputs="i", hint="h") is False
    assert probe_input(Smoothed(), (1, 4, 4), what="m", inputs="i", hint="h") is False
    assert wrapped[1].scored_inputs == 0


def test_smoothed_defense_is_marked_stateful():
    from zoattack.defense.model import SmoothedDefendedClassifier

    assert SmoothedDefendedClassifier.stateful_forward is True


def test_oversized_card_is_refused_before_building(tmp_path, monkeypatch):
    """hidden=300000 in a card next to small weights: refused from the header's shapes (the
    model of 4.5 GB is never built), naming the card."""
    import json

    from zoattack.models.weights import save_weights

    net = SmallCNN(generator=torch.Generator().manual_seed(0))
    w, card = save_weights(net, tmp_path / "m.safetensors", {"model": "small_cnn"})
    doc = json.loads(card.read_text())
    doc["architecture"] = {"config": {**net.config(), "hidden": 300_000}}
    card.write_text(json.dumps(doc))
    monkeypatch.setenv(MEMORY_ENV, "64M")  # a build would be refused too, not allocated
    with pytest.raises(ValueError) as info:
        create_model("small_cnn", dataset="fashion-mnist", weights=w)
    msg = str(info.value)
    assert "do not fit" in msg and "m.json" in msg and "(300000, 3136)" in msg
    # Matching shapes, but past the limit: the estimate, not an allocation.
    doc["architecture"] = {"config": net.config()}
    card.write_text(json.dumps(doc))
    monkeypatch.setenv(MEMORY_ENV, "100K")
    with pytest.raises(MemoryLimitError, match="building small_cnn"):
        create_model("small_cnn", dataset="fashion-mnist", weights=w)


def test_weights_without_num_batches_tracked_still_fit(tmp_path):
    """Legacy checkpoints (the published CIFAR-10 ResNets among them) lack BatchNorm's
    num_batches_tracked; load_state_dict fills it, so the shape check must not refuse them."""
    import torch

    from zoattack.models import create_model

    model = create_model("resnet20", dataset="cifar10")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": state}, path)
    loaded = create_model("resnet20", dataset="cifar10", weights=path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert describe_mismatch({"bn.num_batches_tracked": ()}, {}) is None
