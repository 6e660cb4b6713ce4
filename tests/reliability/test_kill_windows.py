"""Kill points too narrow to hit reliably by random SIGKILL, placed deterministically: the
process dies between two writes, then the identical call resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import zoattack.defense.train as train_mod
from zoattack.blackbox import BlackBox
from zoattack.defense.train import DefenseConfig, train_defense
from zoattack.seeding import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 8, 8)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so nothing catches it)."""


def _victim() -> nn.Module:
    gen = make_generator(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in clf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return clf.eval()


def _train(out, **kw):
    cfg = DefenseConfig(
        method="zo-ae-ds",
        latent=6,
        ae_epochs=1,
        epochs=2,
        batch_size=6,
        denoiser_depth=3,
        denoiser_width=4,
        estimator="sphere",
        samples=2,
        seed=3,
    )
    images = torch.rand(12, *SHAPE, generator=make_generator(9))
    bb = BlackBox(_victim(), output="logits", input_shape=SHAPE)
    return train_defense(cfg, bb, images, out, **kw)


def test_defend_train_killed_after_the_last_checkpoint_resumes_to_the_final_defense(
    tmp_path, monkeypatch
):
    ref = _train(tmp_path / "ref")
    write = train_mod._write_outputs

    def dies_before_the_final_outputs(*args, done, **kwargs):
        if done:
            raise Killed  # checkpoint(2, last epoch) is on disk; the final outputs are not
        return write(*args, done=done, **kwargs)

    monkeypatch.setattr(train_mod, "_write_outputs", dies_before_the_final_outputs)
    with pytest.raises(Killed):
        _train(tmp_path / "cut")
    monkeypatch.setattr(train_mod, "_write_outputs", write)
    _train(tmp_path / "cut", resume=True)

    card = json.loads((tmp_path / "cut" / "defense.json").read_text())
    assert card["complete"] and card["epochs_done"] == ref["epochs_done"] == 2
    a = load_file(str(tmp_path / "ref" / "defense.safetensors"))
    b = load_file(str(tmp_path / "cut" / "defense.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
