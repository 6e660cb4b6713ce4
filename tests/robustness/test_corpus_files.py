"""Malformed-input corpus, files: every file the tool reads, as random bytes, truncated copies
and structurally plausible but wrong contents (hypothesis), fed to the command that reads it.

Each case must keep the CLI's contract (conftest ``zo_cli``): exit 0, 2 or 3, no traceback,
no uncaught exception; a refused command (exit 2) leaves no output folder behind.
"""

from __future__ import annotations

import itertools
import json
import pickle
import sqlite3
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RUN = ["run", "--images", "1", "--budget", "4", "--device", "cpu", "--chunk-size", "1"]
_n = itertools.count()

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["format", "model", "dataset", "architecture", "config", "image_shape", "denoiser",
     "autoencoder", "channels", "depth", "width", "latent", "arch", "sigma", "blackbox",
     "method", "classes", "data", "hidden", "input_size", "num_classes", "in_channels"]
)  # fmt: skip
# JSON objects that use the keys the readers look for, nested, with wrong-typed values.
CARD = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=15,
)


def fresh(tmp_path: Path, name: str = "out") -> Path:
    return tmp_path / f"{name}{next(_n)}"


def refused_leaves_nothing(res: Any, out: Path) -> None:
    if res.exit_code == 2:
        assert not out.exists(), f"refused but left {out}"


def truncations(blob: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(blob)).map(lambda k: blob[:k])


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> Path:
    """The shipped small_cnn weights copied to a folder of our own (with its card)."""
    import shutil

    from zoattack.models.weights import card_path, weights_dir

    src = weights_dir() / "small_cnn_fashion-mnist.safetensors"
    dst = tmp_path_factory.mktemp("w") / "m.safetensors"
    shutil.copy(src, dst)
    shutil.copy(card_path(src), card_path(dst))
    return dst


# -- weights and cards ---------------------------------------------------------------------


@FUZZ
@given(blob=st.binary(max_size=300), suffix=st.sampled_from([".safetensors", ".pt", ".bin"]))
def test_random_weights(tmp_path, corpus, zo_cli, blob, suffix):
    path = fresh(tmp_path, "w").with_suffix(suffix)
    path.write_bytes(blob)
    out = fresh(tmp_path)
    refused_leaves_nothing(zo_cli(*RUN, "--weights", str(path), "--out", str(out)), out)
    corpus.add("files")


@FUZZ
@given(data=st.data())
def test_truncated_and_relabelled_weights(tmp_path, corpus, zo_cli, good_weights, data):
    blob = good_weights.read_bytes()
    cut = data.draw(truncations(blob))
    header = data.draw(CARD)
    kind = data.draw(st.sampled_from(["cut", "header"]))
    path = fresh(tmp_path, "w").with_suffix(".safetensors")
    if kind == "cut":
        path.write_bytes(cut)
    else:  # a plausible safetensors header describing tensors that are not there
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 64)
    out = fresh(tmp_path)
    refused_leaves_nothing(zo_cli(*RUN, "--weights", str(path), "--out", str(out)), out)
    corpus.add("files")


@FUZZ
@given(card=CARD | JSON, raw=st.booleans(), junk=st.binary(max_size=40))
def test_model_cards(tmp_path, corpus, zo_cli, good_weights, card, raw, junk):
    folder = fresh(tmp_path, "m")
    folder.mkdir()
    w = folder / "m.safetensors"
    w.write_bytes(good_weights.read_bytes())
    (folder / "m.json").write_bytes(junk if raw else json.dumps(card).encode())
    out = fresh(tmp_path)
    refused_leaves_nothing(zo_cli(*RUN, "--weights", str(w), "--out", str(out)), out)
    corpus.add("files")


# -- data sets -------------------------------------------------------------------------------


@FUZZ
@given(
    blobs=st.lists(st.binary(max_size=120), min_size=1, max_size=3),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".tiff", ".bmp"]),
)
def test_image_folders(tmp_path, corpus, zo_cli, blobs, suffix):
    from PIL import Image

    root = fresh(tmp_path, "img")
    for i, blob in enumerate(blobs):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / f"x{i}{suffix}").write_bytes(blob)
    (root / "c1").mkdir(exist_ok=True)
    Image.new("L", (28, 28), 7).save(root / "c1" / "ok.png")
    out = fresh(tmp_path)
    res = zo_cli(*RUN, "--dataset", "imagefolder", "--data-dir", str(root), "--out", str(out))
    refused_leaves_nothing(res, out)
    corpus.add("files")


ARRAYS = st.builds(
    lambda shape, dtype: np.zeros(shape, dtype),
    st.lists(st.integers(0, 3100), max_size=3).map(tuple),
    st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
)
PICKLED = st.recursive(
    st.none() | st.integers() | st.text(max_size=4) | st.binary(max_size=4) | ARRAYS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["data", "labels", b"data", b"labels", "fine_labels", "label_names"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=6,
)


@FUZZ
@given(obj=PICKLED, protocol=st.integers(0, 5), raw=st.binary(max_size=60), use_raw=st.booleans())
def test_cifar_batches(tmp_path, corpus, zo_cli, obj, protocol, raw, use_raw):
    root = fresh(tmp_path, "cifar") / "cifar-10-batches-py"
    root.mkdir(parents=True)
    (root / "test_batch").write_bytes(raw if use_raw else pickle.dumps(obj, protocol=protocol))
    out = fresh(tmp_path)
    res = zo_cli(*RUN, "--dataset", "cifar10", "--data-dir", str(root.parent), "--out", str(out))
    refused_leaves_nothing(res, out)
    corpus.add("files")


@FUZZ
@given(
    head=st.binary(min_size=0, max_size=24),
    dims=st.lists(st.integers(0, 2**32 - 1), max_size=4),
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0D, 0x0E, 0x42]),
    body=st.binary(max_size=200),
    gz=st.booleans(),
    structured=st.booleans(),
)
def test_mnist_idx_files(tmp_path, corpus, zo_cli, head, dims, code, body, gz, structured):
    import gzip

    root = fresh(tmp_path, "mnist") / "MNIST" / "raw"
    root.mkdir(parents=True)
    blob = (
        bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body
        if structured
        else head + body
    )
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        data = gzip.compress(blob) if gz else blob
        (root / (name + (".gz" if gz else ""))).write_bytes(data)
    out = fresh(tmp_path)
    res = zo_cli(*RUN, "--dataset", "mnist", "--data-dir", str(root.parent.parent), "--out",
                 str(out))  # fmt: skip
    refused_leaves_nothing(res, out)
    corpus.add("files")


# -- plans -----------------------------------------------------------------------------------

PLAN_VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.booleans(),
    st.lists(st.integers(-3, 5), max_size=3),
)
PLAN_KEYS = st.sampled_from(
    ["images", "budget", "eps", "norm", "optimizer", "seed", "target", "subspace", "model",
     "dataset", "lr", "chunk_size", "max_batch", "out", "bogus", "samples", "estimator"]
)  # fmt: skip


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


@FUZZ
@given(
    text=st.text(max_size=80),
    table=st.sampled_from(["defaults", "grid", "[job]", "batch", "nonsense"]),
    body=st.dictionaries(PLAN_KEYS, PLAN_VALUES, max_size=3),
    structured=st.booleans(),
)
def test_plans(tmp_path, corpus, zo_cli, text, table, body, structured):
    plan = fresh(tmp_path, "plan").with_suffix(".toml")
    if structured:
        lines = ["[defaults]", "images = 1", "budget = 4", 'device = "cpu"', f"[{table}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        plan.write_text("\n".join(lines) + "\n")
    else:
        plan.write_text(text)
    out = fresh(tmp_path)
    res = zo_cli("batch", str(plan), "--out", str(out), "--dry-run")
    assert not out.exists()
    if res.exit_code == 2:  # the real command refuses it as well, before creating anything
        res = zo_cli("batch", str(plan), "--out", str(out))
        assert res.exit_code == 2
        refused_leaves_nothing(res, out)
    corpus.add("files", 2)


# -- result stores and run folders -----------------------------------------------------------


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory, zo_cli) -> Path:
    folder = tmp_path_factory.mktemp("store")
    plan = folder / "plan.toml"
    plan.write_text(
        '[defaults]\nimages = 2\nbudget = 6\ndevice = "cpu"\nchunk_size = 1\n'
        '[grid]\noptimizer = ["sign", "square"]\n'
    )
    res = zo_cli("batch", str(plan), "--out", str(folder / "res"))
    assert res.exit_code == 0, res.output
    return folder


SQL_VALUES = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8),
    st.binary(max_size=8),
)  # fmt: skip
TABLE_COLUMNS = {
    "jobs": ["status", "settings", "spec", "eps", "budget", "images", "label", "norm",
             "scored_inputs", "seconds", "optimizer"],
    "rows": ['"index"', "success", "queries", "linf", "l2", "stop_reason", "label"],
    "meta": ["value"],
}  # fmt: skip


@settings(FUZZ, max_examples=8)
@given(
    data=st.data(),
    table=st.sampled_from(sorted(TABLE_COLUMNS)),
    mode=st.sampled_from(["update", "bytes", "cut", "drop"]),
)
def test_result_stores(tmp_path, corpus, zo_cli, finished_store, data, table, mode):
    import shutil

    folder = fresh(tmp_path, "res")
    shutil.copytree(finished_store / "res", folder)
    db = folder / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if mode == "update":
        col = data.draw(st.sampled_from(TABLE_COLUMNS[table]))
        with sqlite3.connect(db) as con:
            try:
                con.execute(f"UPDATE {table} SET {col}=?", (data.draw(SQL_VALUES),))
            except sqlite3.IntegrityError:  # NOT NULL: SQLite itself keeps that one out
                pass
    elif mode == "drop":
        with sqlite3.connect(db) as con:
            con.execute(f"DROP TABLE {table}")
    else:
        blob = db.read_bytes()
        db.write_bytes(data.draw(st.binary(max_size=200)) if mode == "bytes" else
                       data.draw(truncations(blob)))  # fmt: skip
        for extra in folder.glob("results.sqlite-*"):
            extra.unlink()
    plots = fresh(tmp_path, "plots")
    res = zo_cli("report", str(folder), "--plots", str(plots))
    refused_leaves_nothing(res, plots)
    res = zo_cli("batch", str(finished_store / "plan.toml"), "--out", str(folder), "--dry-run")
    corpus.add("files", 2)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, zo_cli) -> Path:
    folder = tmp_path_factory.mktemp("run") / "r"
    res = zo_cli(*RUN, "--images", "2", "--out", str(folder))
    assert res.exit_code == 0, res.output
    return folder


@FUZZ
@given(
    name=st.sampled_from(["run.json", "per_image.csv", "summary.json"]),
    mode=st.sampled_from(["bytes", "cut", "json", "csv"]),
    data=st.data(),
)
def test_run_folders(tmp_path, corpus, zo_cli, finished_run, name, mode, data):
    import shutil

    folder = fresh(tmp_path, "r")
    shutil.copytree(finished_run, folder)
    path = folder / name
    if mode == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=200)))
    elif mode == "cut":
        path.write_bytes(data.draw(truncations(path.read_bytes())))
    elif mode == "json":
        path.write_text(json.dumps(data.draw(CARD | JSON)))
    else:
        cells = data.draw(st.lists(st.text(max_size=5), min_size=1, max_size=12))
        lines = path.read_text().splitlines()[:1] + [",".join(cells)]
        path.write_text("\n".join(lines) + "\n")
    zo_cli(*RUN, "--images", "2", "--out", str(folder), "--resume")
    corpus.add("files")


# -- defense folders and checkpoints ---------------------------------------------------------


@settings(FUZZ, max_examples=6)
@given(
    card=CARD | JSON,
    weights=st.binary(max_size=120),
    with_checkpoint=st.booleans(),
)
def test_defense_folders(tmp_path, corpus, zo_cli, card, weights, with_checkpoint):
    folder = fresh(tmp_path, "def")
    folder.mkdir()
    if isinstance(card, dict) and card:
        card = {"format": "zoattack-defense/1", **card}
    (folder / "defense.json").write_text(json.dumps(card))
    (folder / "defense.safetensors").write_bytes(weights)
    cert = fresh(tmp_path, "cert")
    res = zo_cli("defend", "certify", "--defense", str(folder), "--images", "1", "--n0", "4",
                 "--n", "8", "--batch", "8", "--device", "cpu", "--threads", "1",
                 "--out", str(cert))  # fmt: skip
    refused_leaves_nothing(res, cert)
    if with_checkpoint:
        (folder / "checkpoint.safetensors").write_bytes(weights)
        zo_cli("defend", "train", "--model", "small_cnn", "--train-images", "8", "--epochs", "1",
               "--ae-epochs", "1", "--device", "cpu", "--threads", "1", "--out", str(folder),
               "--resume")  # fmt: skip
    corpus.add("files", 1 + with_checkpoint)


def test_a_real_defense_checkpoint_cut_short(tmp_path, corpus, zo_cli):
    from zoattack.defense.io import save_state

    ckpt = tmp_path / "d" / "checkpoint.safetensors"
    ckpt.parent.mkdir()
    save_state(ckpt, {"epoch": 1, "w": torch.zeros(8, 8), "history": [{"loss": 1.0}]})
    blob = ckpt.read_bytes()
    for k in (0, 8, 20, len(blob) // 2, len(blob) - 1):
        ckpt.write_bytes(blob[:k])
        zo_cli("defend", "train", "--model", "small_cnn", "--train-images", "8", "--epochs", "1",
               "--ae-epochs", "1", "--device", "cpu", "--threads", "1",
               "--out", str(ckpt.parent), "--resume")  # fmt: skip
        corpus.add("files")
