"""Malformed-input corpus, surrogates (issue 25): bad --surrogates get one line and exit 2,
before any victim query and with no output left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

BASE = ["run", "--images", "2", "--budget", "6", "--device", "cpu", "--model", "small_cnn"]


def _bad_weights(tmp: Path) -> str:
    path = tmp / "other.safetensors"
    save_file({"w": __import__("torch").zeros(3)}, str(path))
    return str(path)


CASES = [
    (["--attack", "transfer", "--surrogates", "no_such_model"], "cannot be loaded"),
    (["--attack", "gfcs", "--surrogates", "resnet20", "--surrogate-weights", "/nonexistent.pt"],
     "cannot be loaded"),
    (["--attack", "gfcs", "--surrogates", "resnet20", "--surrogate-weights", "a.pt,b.pt"],
     "one per surrogate"),
    (["--attack", "gfcs", "--surrogates", "resnet20,,small_cnn"], "separated by commas"),
    (["--attack", "gfcs"], "--surrogates"),
    (["--attack", "transfer", "--surrogates", "remote:http://127.0.0.1:9/"], "local model"),
    (["--attack", "square", "--surrogates", "resnet20"], "uses no surrogate"),
    (["--attack", "hsja", "--labels-only", "--surrogates", "resnet20"], "not used"),
    (["--surrogate-weights", "a.pt"], "pass --surrogates"),
    (["--surrogates", "resnet20", "--prior", "small_cnn"], "both name surrogates"),
    (["--attack", "gfcs", "--surrogates", "resnet20", "--samples", "3"], "drop --samples"),
    (["--attack", "transfer", "--surrogates", "resnet20", "--lr", "0"], "must be > 0"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), CASES)
def test_bad_surrogate_options_exit_2_in_one_line(zo_cli, tmp_path, args, words) -> None:
    out = tmp_path / "run"
    res = zo_cli(*BASE, *args, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert words in res.output
    assert not out.exists()  # refused before a run folder (and any victim query)


def test_a_surrogate_of_another_architecture_file_is_refused(zo_cli, tmp_path) -> None:
    bad = _bad_weights(tmp_path)
    res = zo_cli(*BASE, "--attack", "transfer", "--surrogates", "resnet20",
                 "--surrogate-weights", bad, "--out", str(tmp_path / "r"))  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "surrogate resnet20" in res.output
    assert not (tmp_path / "r").exists()
