"""Malformed-input corpus, options: every command fed hostile option values (hypothesis).

Each case must keep the CLI's contract (conftest ``zo_cli``): exit 0, 2 or 3, no traceback,
no uncaught exception; a refused command (exit 2) leaves no output behind.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_n = itertools.count()

INTS = st.sampled_from(
    ["0", "-1", "1", "2", "3", "-9223372036854775809", str(2**63), str(10**30), "1e3", "x", ""]
)
FLOATS = st.sampled_from(
    ["0", "-0.5", "nan", "inf", "-inf", "1e308", "1e-320", "300", "0.5", "x", "1,5", ""]
)
WORDS = st.one_of(
    st.sampled_from(["", " ", "[red]x[/]", "../../etc", "a:b:c", "remote:", "remote:ftp://x",
                     "tile:0", "tile:-1", "tile:99999", "dct:0", "dct:x", "full>full", ">",
                     "tile:7>", "random", "least-likely", "-1", "10", "99999999999999999999"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)  # fmt: skip

RUN_BASE = ["run", "--images", "1", "--budget", "4", "--device", "cpu", "--chunk-size", "1"]
RUN_OPTS = {
    "--images": INTS,
    "--budget": INTS,
    "--eps": FLOATS,
    "--lr": FLOATS,
    "--mu": FLOATS,
    "--momentum": FLOATS,
    "--samples": INTS,
    "--seed": INTS,
    "--max-batch": INTS,
    "--chunk-size": INTS,
    "--norm": WORDS,
    "--optimizer": WORDS,
    "--estimator": WORDS,
    "--subspace": WORDS,
    "--target": WORDS,
    "--loss": WORDS,
    "--difference": WORDS,
    "--model": WORDS,
    "--dataset": WORDS,
    "--device": WORDS,
    "--threat-model": WORDS,
}


def refused_leaves_nothing(res, out: Path) -> None:
    if res.exit_code == 2:
        assert not out.exists(), f"refused but wrote {sorted(p.name for p in out.iterdir())}"


@settings(FUZZ, max_examples=30)
@given(option=st.sampled_from(sorted(RUN_OPTS)), data=st.data())
def test_run_options(tmp_path, corpus, zo_cli, option, data):
    value = data.draw(RUN_OPTS[option])
    if option in ("--budget", "--images") and value.isdigit() and 4 < int(value) < 10**6:
        value = "4"  # a valid large value is just a long run, not a malformed input
    out = tmp_path / f"out{next(_n)}"
    norm = data.draw(st.sampled_from(["linf", "l2"]))
    res = zo_cli(*RUN_BASE, "--norm", norm, option, value, "--out", str(out))
    corpus.add("options")
    refused_leaves_nothing(res, out)


OPT_OPTS = {
    "--function": WORDS,
    "--dim": INTS,
    "--seeds": INTS,
    "--budget": INTS,
    "--optimizer": WORDS,
    "--estimator": WORDS,
    "--samples": INTS,
    "--lr": FLOATS,
    "--mu": FLOATS,
    "--seed": INTS,
    "--device": WORDS,
}


@FUZZ
@given(option=st.sampled_from(sorted(OPT_OPTS)), data=st.data())
def test_optimize_options(corpus, zo_cli, option, data):
    value = data.draw(OPT_OPTS[option])
    if option in ("--budget", "--dim", "--seeds") and value.isdigit() and int(value) > 50:
        value = "50"
    zo_cli("optimize", "--dim", "8", "--seeds", "1", "--budget", "40", option, value, "--json")
    corpus.add("options")


@FUZZ
@given(kind=WORDS, pattern=WORDS)
def test_list(corpus, zo_cli, kind, pattern):
    zo_cli("list", kind, pattern)
    corpus.add("options")


TRAIN_OPTS = {
    "--model": WORDS,
    "--dataset": WORDS,
    "--epochs": INTS,
    "--lr": FLOATS,
    "--batch-size": INTS,
    "--limit": INTS,
    "--test-limit": INTS,
    "--optimizer": WORDS,
    "--weight-decay": FLOATS,
    "--schedule": WORDS,
    "--augment": WORDS,
    "--image-size": INTS,
    "--threads": INTS,
    "--device": WORDS,
}


@settings(FUZZ, max_examples=6)
@given(option=st.sampled_from(sorted(TRAIN_OPTS)), data=st.data())
def test_train_options(tmp_path, corpus, zo_cli, option, data):
    value = data.draw(TRAIN_OPTS[option])
    if option in ("--epochs", "--limit", "--test-limit") and value.isdigit() and int(value) > 1:
        value = "1"
    out = tmp_path / f"w{next(_n)}" / "m.safetensors"
    base = ["train", "--dataset", "digits", "--limit", "16", "--test-limit", "8"]
    res = zo_cli(*base, "--epochs", "1", "--threads", "1", "--device", "cpu", option, value,
              "--out", str(out))  # fmt: skip
    corpus.add("options")
    refused_leaves_nothing(res, out.parent)


SERVE_BAD = [
    ["--output", "scores"],
    ["--output", ""],
    ["--port", "-1"],
    ["--port", "70000"],
    ["--max-batch", "0"],
    ["--max-bytes", "10"],
    ["--model", "remote:http://127.0.0.1:9"],
    ["--model", "nope"],
    ["--dataset", "nope"],
    ["--host", "256.1.1.1"],
    ["--weights", "/nonexistent.safetensors"],
    ["--device", "tpu"],
    ["--log-level", "loud"],
]


def test_serve_bad_options(corpus, zo_cli):
    # Only refusals here: a valid serve command would block serving.
    for args in SERVE_BAD:
        res = zo_cli("serve", "--device", "cpu", *args)
        assert res.exit_code == 2, (args, res.output)
        corpus.add("options")


# Refusals only (a valid value trains a defense: seconds each on a busy machine).
DEFEND_BAD = [
    ("--sigma", "inf"),  # trained, wrote a checkpoint, then failed: now refused up front
    ("--sigma", "nan"),
    ("--sigma", "-0.5"),
    ("--lr", "inf"),
    ("--mu", "1e999"),
    ("--epochs", "0"),
    ("--batch-size", "0"),
    ("--train-images", "0"),
    ("--samples", "0"),
    ("--max-batch", "0"),
    ("--method", "[red]x[/]"),
    ("--output", "scores"),
    ("--output", "labels"),
    ("--estimator", "é"),
]


@pytest.mark.parametrize("option, value", DEFEND_BAD)
def test_defend_train_refusals(tmp_path, corpus, zo_cli, option, value):
    out = tmp_path / "d"
    base = ["defend", "train", "--train-images", "8", "--epochs", "1", "--ae-epochs", "1",
            "--latent", "8", "--denoiser-depth", "2", "--denoiser-width", "4", "-q", "2",
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    res = zo_cli(*base, option, value, "--out", str(out))
    corpus.add("options")
    assert res.exit_code == 2, res.output
    refused_leaves_nothing(res, out)
