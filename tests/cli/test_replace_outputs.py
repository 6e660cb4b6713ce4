"""`zoattack train` and `defend train` never replace earlier work silently (issue 24, item 4).

Trained weights, a card or an interrupted training's checkpoint at --out are replaced only
with --overwrite and continued only with --resume, as `run --out` and `defend certify` do: a
plain rerun is one line, exit 2, every file left as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()

TRAIN = ["train", "--dataset", "digits", "--limit", "16", "--test-limit", "8", "--epochs", "1",
         "--threads", "1", "--device", "cpu"]  # fmt: skip
DEFEND = ["defend", "train", "--train-images", "8", "--epochs", "1", "--ae-epochs", "1",
          "--latent", "8", "--denoiser-depth", "2", "--denoiser-width", "4", "-q", "2",
          "--device", "cpu", "--threads", "1"]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("present", [("m.safetensors",), ("m.json",), ("m.safetensors", "m.json")])
def test_train_refuses_to_replace_weights(tmp_path, present):
    for name in present:
        (tmp_path / name).write_bytes(b"earlier weights")
    before = _snapshot(tmp_path)
    res = runner.invoke(app, [*TRAIN, "--out", str(tmp_path / "m.safetensors")])
    _one_line_error(res, "--overwrite", "trained weights")
    assert "--resume" not in res.stderr  # finished weights cannot be continued
    assert _snapshot(tmp_path) == before


def test_train_keeps_a_killed_trainings_checkpoint(tmp_path):
    # What a SIGKILL leaves: the per-epoch checkpoint, no weights yet.
    (tmp_path / "m.ckpt.pt").write_bytes(b"epoch 3 of 4")
    before = _snapshot(tmp_path)
    res = runner.invoke(app, [*TRAIN, "--out", str(tmp_path / "m.safetensors")])
    _one_line_error(res, "--resume", "--overwrite", "m.ckpt.pt")
    assert _snapshot(tmp_path) == before


def test_train_resume_and_overwrite_together_is_refused(tmp_path):
    (tmp_path / "m.ckpt.pt").write_bytes(b"x")
    res = runner.invoke(
        app, [*TRAIN, "--out", str(tmp_path / "m.safetensors"), "--resume", "--overwrite"]
    )
    _one_line_error(res, "pick one")
    res = runner.invoke(app, [*TRAIN, "--out", str(tmp_path / "n.safetensors"), "--resume"])
    _one_line_error(res, "no checkpoint")


def test_train_overwrite_replaces(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"earlier weights")
    (tmp_path / "m.ckpt.pt").write_bytes(b"a stale checkpoint")
    res = runner.invoke(app, [*TRAIN, "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != b"earlier weights" and (tmp_path / "m.json").is_file()
    assert not (tmp_path / "m.ckpt.pt").exists()


@pytest.mark.parametrize(
    "present, words",
    [
        (("checkpoint.safetensors",), ("--resume", "--overwrite")),
        (("defense.safetensors", "defense.json"), ("--overwrite",)),
    ],
)
def test_defend_train_refuses_to_replace_a_defense(tmp_path, present, words):
    for name in present:
        (tmp_path / name).write_bytes(b"earlier")
    before = _snapshot(tmp_path)
    res = runner.invoke(app, [*DEFEND, "--out", str(tmp_path)])
    _one_line_error(res, *words)
    assert _snapshot(tmp_path) == before
    res = runner.invoke(app, [*DEFEND, "--out", str(tmp_path), "--resume", "--overwrite"])
    _one_line_error(res, "pick one")
    assert _snapshot(tmp_path) == before


def test_defend_train_overwrite_replaces(tmp_path):
    (tmp_path / "defense.json").write_text("earlier")
    res = runner.invoke(app, [*DEFEND, "--out", str(tmp_path), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "defense.json").read_text() != "earlier"
    assert (tmp_path / "checkpoint.safetensors").is_file()
