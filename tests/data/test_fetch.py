"""--download of CIFAR-10, MNIST and Fashion-MNIST through torchvision's dataset classes,
against an HTTP server on 127.0.0.1 serving archives built here (torchvision's URLs, mirrors
and MD5s pointed at them): good archives load; truncated, corrupt or unreachable ones are
refused with one line, and nothing half-extracted is later read as data."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.data import load_dataset
from zoattack.data.fetch import DatasetDownloadError, fetch_dataset, load_or_fetch
from zoattack.data.files import MissingFileError

runner = CliRunner()


@pytest.fixture()
def server(loopback_files):
    return loopback_files


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _cifar_members(n: int = 6) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        out[name] = _pickled({"data": data, "labels": [i % 10 for i in range(n)]})
    out["batches.meta"] = _pickled({"label_names": [f"c{i}" for i in range(10)]})
    return out


def _tar_gz(members: dict[str, bytes], folder: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@pytest.fixture()
def cifar(server, monkeypatch):
    """torchvision's CIFAR10 pointed at the local server, MD5s those of a tiny archive."""
    url, files = server
    members = _cifar_members()
    archive = _tar_gz(members, "cifar-10-batches-py")
    files.files["/cifar.tar.gz"] = archive
    monkeypatch.setattr(tvd.CIFAR10, "url", url + "/cifar.tar.gz")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(
        tvd.CIFAR10,
        "train_list",
        [[f"data_batch_{i}", md5(members[f"data_batch_{i}"])] for i in range(1, 6)],
    )
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5(members["test_batch"])]])
    monkeypatch.setattr(
        tvd.CIFAR10,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": md5(members["batches.meta"])},
    )
    return {"files": files, "archive": archive, "url": url}


def _nothing_written(root: Path) -> None:
    left = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert left == [], left
    with pytest.raises(MissingFileError, match="--download"):
        load_or_fetch(load_dataset, "cifar10", data_dir=str(root), download=False, split="test")


def test_cifar10_downloads_verifies_and_loads(cifar, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(MissingFileError, match="rerun with --download"):
        load_or_fetch(load_dataset, "cifar10", data_dir=str(root), download=False, split="test")
    assert cifar["files"].hits == []  # never fetched unasked
    ds = load_or_fetch(load_dataset, "cifar10", data_dir=str(root), download=True, split="test")
    assert len(ds) == 6 and ds.images.shape == (6, 3, 32, 32) and ds.classes[0] == "c0"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temp left
    # Present now: loaded as is, nothing fetched again.
    hits = len(cifar["files"].hits)
    load_or_fetch(load_dataset, "cifar10", data_dir=str(root), download=True, split="train")
    assert len(cifar["files"].hits) == hits


def test_truncated_archive_is_refused_and_nothing_is_kept(cifar, tmp_path):
    cifar["files"].truncate.add("/cifar.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DatasetDownloadError) as info:
        fetch_dataset("cifar10", root)
    msg = str(info.value)
    assert "\n" not in msg and str(root) in msg and "CIFAR10('DIR', download=True)" in msg
    _nothing_written(root)


def test_corrupt_archive_is_refused(cifar, tmp_path, monkeypatch):
    root = tmp_path / "data"
    bad = bytearray(cifar["archive"])
    bad[len(bad) // 2] ^= 0xFF
    cifar["files"].files["/cifar.tar.gz"] = bytes(bad)
    with pytest.raises(DatasetDownloadError, match="corrupted"):  # MD5 mismatch
        fetch_dataset("cifar10", root)
    _nothing_written(root)
    # A broken archive that passes its MD5 (the MD5 of the broken bytes): extraction starts
    # in the temporary folder, fails part-way, and that folder is discarded.
    cut = cifar["archive"][: len(cifar["archive"]) * 2 // 3]
    cifar["files"].files["/cifar.tar.gz"] = cut
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(cut))
    with pytest.raises(DatasetDownloadError):
        fetch_dataset("cifar10", root)
    _nothing_written(root)


def test_a_partial_folder_is_replaced_only_by_a_verified_download(cifar, tmp_path):
    root = tmp_path / "data"
    partial = root / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    (partial / "data_batch_1").write_bytes(b"half a file")
    ds = load_or_fetch(load_dataset, "cifar10", data_dir=str(root), download=True, split="test")
    assert len(ds) == 6
    assert (partial / "data_batch_1").read_bytes() != b"half a file"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]


def test_offline_is_one_line_naming_the_folder(monkeypatch, tmp_path):
    # Port 9 on 127.0.0.1 (discard) refuses connections here: an offline stand-in.
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    root = tmp_path / "data"
    with pytest.raises(DatasetDownloadError) as info:
        fetch_dataset("mnist", root)
    msg = str(info.value)
    assert "\n" not in msg and str(root) in msg and "MNIST('DIR', download=True)" in msg
    assert sorted(p.name for p in root.iterdir()) == []


def _idx_images(n: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return struct.pack(">IIII", 2051, n, 28, 28) + data.tobytes()


def _idx_labels(n: int) -> bytes:
    return struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))


@pytest.mark.parametrize(
    ("name", "cls"), [("mnist", tvd.MNIST), ("fashion-mnist", tvd.FashionMNIST)]
)
def test_mnist_family_downloads(name, cls, server, monkeypatch, tmp_path):
    url, files = server
    bodies = {
        "train-images-idx3-ubyte.gz": gzip.compress(_idx_images(5, 0)),
        "train-labels-idx1-ubyte.gz": gzip.compress(_idx_labels(5)),
        "t10k-images-idx3-ubyte.gz": gzip.compress(_idx_images(3, 1)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(_idx_labels(3)),
    }
    for fname, body in bodies.items():
        files.files[f"/{name}/{fname}"] = body
    monkeypatch.setattr(cls, "mirrors", [f"{url}/{name}/"])
    monkeypatch.setattr(cls, "resources", [(f, md5(b)) for f, b in bodies.items()])
    root = tmp_path / "data"
    ds = load_or_fetch(load_dataset, name, data_dir=str(root), download=True, split="test")
    assert ds.images.shape == (3, 1, 28, 28) and ds.labels.tolist() == [0, 1, 2]
    assert load_dataset(name, split="train", data_dir=str(root)).images.shape[0] == 5
    assert sorted(p.name for p in root.iterdir()) == [cls.__name__]
    # A corrupt file (its MD5 no longer matches) is refused, the good copy stays.
    files.files[f"/{name}/t10k-labels-idx1-ubyte.gz"] = b"junk"
    with pytest.raises(DatasetDownloadError):
        fetch_dataset(name, tmp_path / "other")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == []


def _cli(tmp_path: Path, *extra: str):
    from zoattack.models import create_model, save_weights
    from zoattack.seeding import make_generator

    weights = tmp_path / "w.safetensors"
    if not weights.exists():
        model = create_model("small_cnn", dataset="cifar10", generator=make_generator(0))
        save_weights(model, weights, {"model": "small_cnn", "dataset": "cifar10"})
    base = ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data")]
    base += ["--weights", str(weights), "--images", "2", "--budget", "10", "--device", "cpu"]
    return runner.invoke(app, [*base, *extra])


def test_cli_run_downloads_the_data_set_only_when_asked(cifar, tmp_path):
    res = _cli(tmp_path, "--json")
    assert res.exit_code == 2 and "--download" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    res = _cli(tmp_path, "--json", "--download")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["images"] == 2  # stdout stays JSON
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    cifar["files"].truncate.add("/cifar.tar.gz")
    other = tmp_path / "other"
    other.mkdir()
    res = _cli(other, "--download")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "could not download CIFAR-10" in lines[0]
    assert not (other / "data" / "cifar-10-batches-py").exists()
