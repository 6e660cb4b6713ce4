"""CIFAR-10 from torchvision's on-disk layout (the "python version" pickled batches).

Expected under ``data_dir`` (default ``$ZOATTACK_DATA_DIR`` or ``./data``):
``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; ``data_dir`` may also be
that folder itself. The batches are pickles, so they are read with an unpickler that only
rebuilds numpy arrays and plain containers: a data folder cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoattack.data.files import (
    BadFileError,
    MissingFileError,
    default_data_root,
    describe,
    shown,
)
from zoattack.data.registry import DatasetSpec, ImageDataset, register_dataset, to_float_images

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FOLDER = "cifar-10-batches-py"
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


class UnreadablePickle(BadFileError, pickle.UnpicklingError):
    """A batch file the restricted unpickler refused (or could not parse)."""


_REDOWNLOAD = (
    "download CIFAR-10 again with torchvision.datasets.CIFAR10(DIR, download=True) and pass "
    "--data-dir DIR"
)


def _load_batch(path: Path) -> dict[str, Any]:
    what = "a CIFAR-10 batch file (a pickled dict of arrays)"
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise UnreadablePickle(path, what, describe(exc), _REDOWNLOAD) from None
    except RecursionError:
        raise BadFileError(path, what, "nested too deeply", _REDOWNLOAD) from None
    except Exception as exc:  # unpickling fails in many types on untrusted bytes
        raise BadFileError(path, what, describe(exc), _REDOWNLOAD) from None
    if not isinstance(d, dict):
        raise BadFileError(path, what, f"it holds a {type(d).__name__}", _REDOWNLOAD)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _arrays(batch: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3, 32, 32)`` uint8 images and ``(N,)`` labels, checked against each other."""
    what = "a CIFAR-10 batch file"
    try:
        raw = np.asarray(batch["data"])
        labs = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        if raw.dtype != np.uint8 or raw.size % 3072:
            raise ValueError(
                f"data is {raw.dtype} with {raw.size} values, not uint8 3x32x32 images"
            )
        data = raw.reshape(-1, 3, 32, 32)
        if labs.shape != (len(data),):
            raise ValueError(f"{len(data)} images but labels shaped {labs.shape}")
        if len(labs) and (labs.min() < 0 or labs.max() >= len(CIFAR10_CLASSES)):
            raise ValueError("labels outside 0..9")
    except KeyError as exc:
        raise BadFileError(path, what, f"no {exc} entry", _REDOWNLOAD) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadFileError(path, what, describe(exc), _REDOWNLOAD) from None
    return data, labs


def _folder(data_dir: str | None) -> Path:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_root()
    if (root / "test_batch").is_file() or (root / "data_batch_1").is_file():
        return root
    return root / FOLDER


def load_cifar10(
    *, split: str, data_dir: str | None = None, limit: int | None = None
) -> ImageDataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test 3x32x32 images, 10 classes."""
    folder = _folder(data_dir)
    images, labels = [], []
    have = 0
    for name in _BATCHES[split]:
        if limit is not None and have >= limit:
            break  # first-N never needs the later batches
        path = folder / name
        if not path.is_file():
            raise MissingFileError(
                f"CIFAR-10 {split} batch {name}",
                shown(path),
                "run torchvision.datasets.CIFAR10(DIR, download=True) on a machine with a "
                "network, copy DIR here and pass --data-dir DIR",
            )
        data, labs = _arrays(_load_batch(path), path)
        images.append(data)
        labels.append(labs)
        have += len(data)
    x = np.concatenate(images)[:limit]
    y = np.concatenate(labels)[:limit]
    classes = list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _load_batch(meta).get("label_names")
        if isinstance(names, (list, tuple)) and len(names) == len(CIFAR10_CLASSES):
            classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    return ImageDataset(
        to_float_images(x), torch.as_tensor(y), classes, "cifar10", split, str(folder)
    )


CIFAR10 = register_dataset(
    DatasetSpec(
        "cifar10",
        "CIFAR-10 3x32x32, 10 classes; torchvision's cifar-10-batches-py under --data-dir",
        load_cifar10,
        3,
        (32, 32),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        CIFAR10_CLASSES,
        # RobustBench's CIFAR-10 threat models (Croce et al. 2021).
        eps={"linf": 8 / 255, "l2": 0.5},
    ),
    aliases=("cifar_10",),
)
