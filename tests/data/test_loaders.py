"""Data loaders on tiny files written here in torchvision's on-disk formats; no downloads."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from zoattack.data import (
    DATASETS,
    MissingFileError,
    dataset_spec,
    list_datasets,
    load_bundled_fashion_mnist,
    load_dataset,
)
from zoattack.data import mnist as mnist_mod
from zoattack.data.idx import read_idx, write_idx
from zoattack.errors import UnknownNameError

RNG = np.random.default_rng(0)


def _idx_pair(folder: Path, split: str, n: int, *, gz: bool, side: int = 28):
    prefix = "train" if split == "train" else "t10k"
    images = RNG.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    labels = RNG.integers(0, 10, size=n).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """Hide Debian's files and ./data so fallbacks are exercised deterministically."""
    monkeypatch.setattr(mnist_mod, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("ZOATTACK_DATA_DIR", str(tmp_path / "no-root"))


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_aliases():
    assert list_datasets() == ["fashion-mnist", "mnist", "cifar10", "digits", "imagefolder"]
    for alias in ("fashion_mnist", "FMNIST", "Fashion-MNIST", "cifar-10"):
        assert alias in DATASETS
    assert dataset_spec("fashion_mnist").name == "fashion-mnist"
    spec = dataset_spec("cifar10")
    assert (spec.channels, spec.size, spec.num_classes, len(spec.mean)) == (3, (32, 32), 10, 3)


def test_unknown_dataset_lists_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean fashion-mnist"):
        load_dataset("fashion-mnst")


@pytest.mark.parametrize("kwargs, msg", [({"split": "val"}, "split"), ({"limit": 0}, "limit")])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        load_dataset("digits", **kwargs)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_limit(tmp_path, gz):
    a = RNG.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    np.testing.assert_array_equal(read_idx(p), a)
    np.testing.assert_array_equal(read_idx(p, limit=3), a[:3])


def test_idx_rejects_garbage_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    good = write_idx(tmp_path / "good", np.zeros((4, 3), np.uint8))
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(cut)


# ----------------------------------------------------------------------------- (Fashion-)MNIST


def test_fashion_mnist_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    train_x, train_y = _idx_pair(raw, "train", 12, gz=False)
    test_x, test_y = _idx_pair(raw, "test", 6, gz=False)
    ds = load_dataset("fashion-mnist", split="train", data_dir=str(tmp_path))
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(train_x).float() / 255)
    assert ds.labels.tolist() == train_y.tolist()
    assert ds.classes[0] == "T-shirt/top" and ds.source == str(raw)
    head = load_dataset("fashion-mnist", split="test", data_dir=str(tmp_path), limit=4)
    assert head.labels.tolist() == test_y[:4].tolist() and len(head) == 4


def test_fashion_mnist_flat_gz_layout_like_debian(tmp_path):
    _idx_pair(tmp_path, "test", 5, gz=True)
    ds = load_dataset("fashion-mnist", split="test", data_dir=str(tmp_path))
    assert ds.images.shape == (5, 1, 28, 28)
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0


def test_mnist_raw_gz(tmp_path):
    _, labels = _idx_pair(tmp_path / "MNIST" / "raw", "train", 9, gz=True)
    ds = load_dataset("mnist", split="train", data_dir=str(tmp_path), limit=100)
    assert ds.images.shape == (9, 1, 28, 28) and ds.labels.tolist() == labels.tolist()


def test_missing_mnist_names_expected_path_and_fix(tmp_path):
    with pytest.raises(MissingFileError) as info:
        load_dataset("mnist", split="train", data_dir=str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "download=True" in msg and "--data-dir" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_fashion_train_split_says_apt_get(tmp_path, no_system_data):
    with pytest.raises(MissingFileError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", split="train")
    with pytest.raises(MissingFileError, match=str(tmp_path / "given")):
        load_dataset("fashion-mnist", split="test", data_dir=str(tmp_path / "given"))


def test_fashion_test_split_falls_back_to_bundled_subset(no_system_data):
    ds = load_dataset("fashion-mnist", split="test", limit=10)
    assert len(ds) == 10 and ds.source.startswith("bundled")
    with pytest.warns(UserWarning, match="bundled first 1000"):
        full = load_dataset("fashion-mnist", split="test")
    assert len(full) == 1000
    torch.testing.assert_close(full.images[:10], ds.images)


def test_bundled_subset():
    path = Path(mnist_mod.__file__).parent / "bundled" / mnist_mod.BUNDLED_FASHION
    assert path.stat().st_size < 1_000_000
    ds = load_bundled_fashion_mnist()
    assert ds.images.shape == (1000, 1, 28, 28) and ds.labels.shape == (1000,)
    assert ds.labels.dtype == torch.int64 and ds.images.dtype == torch.float32
    assert torch.bincount(ds.labels, minlength=10).min() >= 80  # all classes present
    assert float(ds.images.max()) == 1.0 and float(ds.images.min()) == 0.0
    with pytest.raises(ValueError, match="dataset-fashion-mnist"):
        load_bundled_fashion_mnist(1001)


@pytest.mark.skipif(
    not (mnist_mod.DEBIAN_FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist not installed",
)
def test_bundled_subset_is_the_first_1000_of_the_real_test_set():
    full = load_dataset("fashion-mnist", split="test", limit=1000)
    bundled = load_bundled_fashion_mnist()
    assert torch.equal(full.images, bundled.images) and torch.equal(full.labels, bundled.labels)


# ----------------------------------------------------------------------------- CIFAR-10


def _cifar_batch(path: Path, n: int, start: int) -> None:
    data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(start + i) % 10 for i in range(n)]
    # Same structure as the real python-version files (dict of str keys, list labels).
    with open(path, "wb") as f:
        pickle.dump(
            {
                "batch_label": path.name,
                "labels": labels,
                "data": data,
                "filenames": [f"img{start + i}.png" for i in range(n)],
            },
            f,
            protocol=2,
        )


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 4, 4 * (i - 1))
    _cifar_batch(folder / "test_batch", 6, 100)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return tmp_path


def test_cifar10_batches(cifar_root):
    train = load_dataset("cifar10", split="train", data_dir=str(cifar_root))
    assert train.images.shape == (20, 3, 32, 32)
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    green = torch.from_numpy(first[1024:2048].reshape(32, 32)).float() / 255
    torch.testing.assert_close(train.images[0, 1], green)
    test = load_dataset("cifar10", split="test", data_dir=str(cifar_root / "cifar-10-batches-py"))
    assert len(test) == 6 and test.classes[3] == "c3"


def test_cifar10_limit_reads_only_needed_batches(cifar_root):
    for i in range(2, 6):
        os.remove(cifar_root / "cifar-10-batches-py" / f"data_batch_{i}")
    ds = load_dataset("cifar10", split="train", data_dir=str(cifar_root), limit=3)
    assert len(ds) == 3
    with pytest.raises(MissingFileError, match="data_batch_2"):
        load_dataset("cifar10", split="train", data_dir=str(cifar_root), limit=5)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", split="test", data_dir=str(tmp_path))


def test_cifar10_missing(tmp_path):
    with pytest.raises(MissingFileError) as info:
        load_dataset("cifar10", split="test", data_dir=str(tmp_path))
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(info.value)
    assert "CIFAR10(DIR, download=True)" in str(info.value)


# ----------------------------------------------------------------------------- digits


def test_digits_splits():
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test", limit=50)
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (50, 1, 8, 8)
    assert float(train.images.max()) == 1.0 and float(train.images.min()) == 0.0
    assert train.labels.dtype == torch.int64
    assert len(load_dataset("digits", split="test")) == 360


# ----------------------------------------------------------------------------- imagefolder


def _png(path: Path, mode: str, size: tuple[int, int], value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, colour).save(path)


def test_imagefolder_gray_round_robin(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / "train" / cls / f"{i}.png", "L", (6, 5), v + i)
        _png(tmp_path / "test" / cls / "0.png", "L", (6, 5), v)
    ds = load_dataset("imagefolder", split="train", data_dir=str(tmp_path), limit=3)
    assert ds.images.shape == (3, 1, 5, 6) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 1, 0]
    assert abs(float(ds.images[0].mean()) - 10 / 255) < 1e-6
    assert abs(float(ds.images[2].mean()) - 11 / 255) < 1e-6
    assert len(load_dataset("imagefolder", split="test", data_dir=str(tmp_path))) == 2


def test_imagefolder_rgb_and_resize(tmp_path):
    _png(tmp_path / "a" / "0.png", "RGB", (4, 4), 50)
    _png(tmp_path / "b" / "0.png", "RGB", (8, 6), 90)
    with pytest.raises(ValueError, match="differ in size"):
        load_dataset("imagefolder", data_dir=str(tmp_path))
    ds = load_dataset("imagefolder", data_dir=str(tmp_path), size=4)
    assert ds.images.shape == (2, 3, 4, 4)
    torch.testing.assert_close(ds.images[0, :, 0, 0], torch.tensor([50, 205, 7]) / 255)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("imagefolder")
    with pytest.raises(MissingFileError, match="image folder: expected"):
        load_dataset("imagefolder", data_dir=str(tmp_path / "nope"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(MissingFileError, match="no images"):
        load_dataset("imagefolder", data_dir=str(tmp_path / "empty"))


def test_gzip_detected_by_content_not_name(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    images, labels = _idx_pair(tmp_path / "src", "test", 3, gz=False)
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        data = (tmp_path / "src" / name).read_bytes()
        (raw / name).write_bytes(gzip.compress(data))  # gzip content, no .gz suffix
    ds = load_dataset("fashion-mnist", split="test", data_dir=str(tmp_path))
    assert ds.labels.tolist() == labels.tolist()
