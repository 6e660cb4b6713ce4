"""Adapters never attack a random network by accident: torchvision:/timm: models load their
pretrained weights from the torch hub / Hugging Face cache by default (weight files the tests
write under the exact names the libraries expect), a missing file is one line and exit 2, and
--random-init is the explicit, labelled and seeded opt-in for an untrained network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.models import create_model

runner = CliRunner()
TV = "squeezenet1_1"


def _tv_file(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A squeezenet1_1 state dict saved where torchvision's DEFAULT weights are cached."""
    import torchvision.models as tvm

    wenum = tvm.get_model_weights(TV).DEFAULT
    path = torch_home / "hub" / "checkpoints" / wenum.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = tvm.get_model_builder(TV)(weights=None, num_classes=len(wenum.meta["categories"]))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(state, path)
    return path, state


def _run(*extra: str):
    base = ["run", "--images", "2", "--budget", "10", "--device", "cpu", "--json"]
    return runner.invoke(app, [*base, *extra])


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_torchvision_loads_cached_pretrained_weights_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    line = _one_line(_run("--model", f"torchvision:{TV}"))
    assert "--download" in line and "--weights" in line and "--random-init" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line
    _, state = _tv_file(tmp_path / "torch")
    model = create_model(f"torchvision:{TV}", pretrained=True)
    for k, v in state.items():
        assert torch.equal(model.model.state_dict()[k], v), k
    res = _run("--model", f"torchvision:{TV}")
    assert res.exit_code == 0, res.output
    assert "random" not in json.loads(res.stdout)["settings"]["method"]


def test_random_init_is_explicit_labelled_and_seeded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from zoattack.jobs.attack import AttackSpec, prepare

    spec = AttackSpec(model=f"torchvision:{TV}", random_init=True, images=2, device="cpu")
    state = torch.random.get_rng_state()
    a, b = prepare(spec).model, prepare(spec).model
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k  # seeded by --seed
    other = prepare(AttackSpec(model=f"torchvision:{TV}", random_init=True, images=2, seed=1))
    assert not torch.equal(other.model.model.features[0].weight, a.model.features[0].weight)
    first = _run("--model", f"torchvision:{TV}", "--random-init")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert "randomly initialised, untrained (--random-init)" in doc["settings"]["method"]
    assert doc["settings"]["random_init"] is True
    again = json.loads(_run("--model", f"torchvision:{TV}", "--random-init").stdout)

    def timeless(summary):
        return {k: v for k, v in summary.items() if "second" not in k}

    assert timeless(again["summary"]) == timeless(doc["summary"])  # same seed, same network
    # zoo models too: an untrained resnet20 instead of the shipped weights
    res = _run("--model", "resnet20", "--random-init")
    assert res.exit_code == 0 and "--random-init" in json.loads(res.stdout)["settings"]["method"]
    line = _one_line(_run("--model", "small_cnn", "--random-init", "--weights", "w.pt"))
    assert "--random-init" in line
    line = _one_line(_run("--model", "robustbench:Standard", "--random-init"))
    assert "--random-init applies to zoo" in line


def test_eval_loads_pretrained_adapters_and_takes_random_init(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    base = ["eval", "--model", f"torchvision:{TV}", "--images", "2", "--steps", "1"]
    base += ["--restarts", "1", "--device", "cpu", "--json"]
    assert "--random-init" in _one_line(runner.invoke(app, base))
    res = runner.invoke(app, [*base, "--random-init"])
    assert res.exit_code == 0, res.output
    assert "--random-init" in json.loads(res.stdout)["settings"]["description"]


def _hf_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """``state`` as ``model.safetensors`` of ``repo`` in a Hugging Face hub cache at ``root``."""
    from safetensors.torch import save_file

    rev = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_timm_loads_pretrained_weights_from_the_hf_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    arch = "test_efficientnet"
    cfg = timm.models.get_pretrained_cfg(arch)
    line = _one_line(_run("--model", f"timm:{arch}"))
    assert "--download" in line and "--random-init" in line
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = timm.create_model(arch, pretrained=False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    _hf_cache(tmp_path / "hf", cfg.hf_hub_id, state)
    model = create_model(f"timm:{arch}", pretrained=True)
    for k, v in state.items():
        assert torch.equal(model.model.state_dict()[k], v), k
    res = _run("--model", f"timm:{arch}")
    assert res.exit_code == 0, res.output
