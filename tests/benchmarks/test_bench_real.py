"""benchmarks/real.py: each zoattack attack is what `zoattack run` resolves (gradient rules with
their own paper's estimator, CIFAR-10's conventional eps), and a tiny run on a stand-in
checkpoint in the published format (its pin patched, files written here) measures and writes
what it says; without --data-dir it says what to pass."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import pickle
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from zoattack.models import download as dl
from zoattack.models.zoo import ResNet20
from zoattack.optim import OPTIMIZERS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    # real.py imports `_common` and `attack` as the script would; both are put in sys.modules
    # only while it loads, so benchmarks/attack.py never shadows another `attack`.
    saved = {k: sys.modules.get(k) for k in ("_common", "attack")}
    try:
        for name in ("_common", "attack", "bench_real"):
            spec = importlib.util.spec_from_file_location(
                name, BENCH / {"bench_real": "real.py"}.get(name, f"{name}.py")
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


real = _load()


@pytest.mark.parametrize("method", real.METHODS)
def test_each_attack_is_the_cli_resolution_with_its_own_estimator(method):
    spec = real.spec_for(method, "linf", 1000, 0, 4096)
    assert spec.eps == pytest.approx(8 / 255) and spec.optimizer == method
    if method in real.GRADIENT_RULES:
        assert spec.estimator == OPTIMIZERS.get(method).factory.default_estimator
    if method != "sign":  # Linf only
        assert real.spec_for(method, "l2", 1000, 0, 4096).eps == pytest.approx(0.5)


def test_needs_data_dir(capsys):
    assert real.main([]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_tiny_run_on_a_stand_in_checkpoint(tmp_path, monkeypatch):
    net = ResNet20(3, 10, generator=torch.Generator().manual_seed(0))
    state = {"module." + k.replace("fc.", "linear.", 1): v for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "best_prec1": 0.0}, buf)
    blob = buf.getvalue()
    pub = dl.PUBLISHED[("resnet20", "cifar10")]
    monkeypatch.setitem(
        dl.PUBLISHED,
        ("resnet20", "cifar10"),
        dataclasses.replace(pub, sha256=hashlib.sha256(blob).hexdigest()),
    )
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / pub.filename
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(blob)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, size=(64, 3072), dtype=np.uint8)
    with torch.no_grad():
        x = torch.as_tensor(data).view(-1, 3, 32, 32).float() / 255
        from zoattack.models import create_model

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        labels = create_model("resnet20", dataset="cifar10", pretrained=True)(x).argmax(1)
    with open(folder / "test_batch", "wb") as f:  # labelled as the stand-in predicts
        pickle.dump({"data": data, "labels": labels.tolist()}, f, protocol=2)
    args = ["--data-dir", str(tmp_path / "data"), "--torch-home", str(tmp_path / "torch")]
    args += ["--images", "2", "--budgets", "30", "--norms", "linf"]
    args += ["--methods", "square", "zo_signsgd", "--out", str(tmp_path / "out"), "--threads", "1"]
    assert real.main(args) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    methods = [r["method"] for r in rows]
    assert methods[-2:] == ["square", "zo_signsgd"]
    assert all(r["images"] == 2 and r["eps"] == pytest.approx(8 / 255) for r in rows)
    assert not any(r["notes"] for r in rows)  # ledgers and verification agree
    assert "sign" in next(r["config"] for r in rows if r["method"] == "zo_signsgd")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "median queries / TA Square" in table
