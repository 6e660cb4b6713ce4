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

from zoattack.data.files import MissingFileError, default_data_root, shown
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


def _load_batch(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="latin1").load()
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR batch (expected a dict, got {type(d).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


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
        batch = _load_batch(path)
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labs = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        images.append(data)
        labels.append(labs)
        have += len(data)
    x = np.concatenate(images)[:limit]
    y = np.concatenate(labels)[:limit]
    classes = list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _load_batch(meta).get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
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
    ),
    aliases=("cifar_10",),
)
