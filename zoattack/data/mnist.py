"""MNIST and Fashion-MNIST from IDX files, plus the bundled Fashion-MNIST test subset.

Search order for the files (``.gz`` or decompressed, whichever is found first):

1. ``data_dir/<Name>/raw/`` (torchvision's layout, ``<Name>`` = ``FashionMNIST`` or ``MNIST``),
   then ``data_dir/`` itself (a folder holding the four files, like Debian's).
2. Without ``data_dir``: ``$ZOATTACK_DATA_DIR`` (or ``./data``) in the same two layouts, then
   for Fashion-MNIST Debian's ``/usr/share/datasets/fashion-mnist/``
   (``apt-get install dataset-fashion-mnist``).
3. Fashion-MNIST test split only, nothing found and no ``data_dir``: the first 1,000 test
   images shipped inside the package, so attacks and tests run on a bare install. They are
   exactly the first 1,000 of the full test file, so ``limit <= 1000`` selects the same images
   whichever source is used.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from zoattack.data.files import MissingFileError, default_data_root, find_file, shown
from zoattack.data.idx import read_idx
from zoattack.data.registry import DatasetSpec, ImageDataset, register_dataset, to_float_images

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BUNDLED_FASHION = "fashion-mnist_test_first1000.npz"
BUNDLED_COUNT = 1000

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _candidates(folder: str, data_dir: str | None, system_dir: Path | None) -> list[Path]:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_root()
    dirs = [root / folder / "raw", root]
    if data_dir is None and system_dir is not None:
        dirs.append(system_dir)
    return dirs


def _read_split(
    title: str,
    folder: str,
    split: str,
    data_dir: str | None,
    limit: int | None,
    system_dir: Path | None,
    how: str,
) -> tuple[np.ndarray, np.ndarray, str]:
    dirs = _candidates(folder, data_dir, system_dir)
    img_name, lab_name = _FILES[split]
    img = find_file(dirs, (img_name + ".gz", img_name))
    lab = find_file(dirs, (lab_name + ".gz", lab_name))
    if img is None or lab is None:
        missing = img_name if img is None else lab_name
        raise MissingFileError(
            f"{title} {split} split", [shown(d / f"{missing}[.gz]") for d in dirs], how
        )
    images = read_idx(img, limit)
    labels = read_idx(lab, limit)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{img} and {lab} do not match: images {images.shape}, labels {labels.shape}"
        )
    return images, labels, str(img.parent)


def load_bundled_fashion_mnist(limit: int | None = None) -> ImageDataset:
    """The first 1,000 Fashion-MNIST test images shipped with zoattack (uint8 in a .npz)."""
    if limit is not None and limit > BUNDLED_COUNT:
        raise ValueError(
            f"only the bundled first {BUNDLED_COUNT} Fashion-MNIST test images are available, "
            f"{limit} were asked for; install the full set with `apt-get install "
            "dataset-fashion-mnist` or pass --data-dir"
        )
    ref = resources.files("zoattack.data") / "bundled" / BUNDLED_FASHION
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        images, labels = z["images"][:limit], z["labels"][:limit]
    return ImageDataset(
        to_float_images(images),
        torch.as_tensor(labels, dtype=torch.int64),
        list(FASHION_CLASSES),
        "fashion-mnist",
        "test",
        f"bundled first {BUNDLED_COUNT} test images",
    )


def load_fashion_mnist(
    *, split: str, data_dir: str | None = None, limit: int | None = None
) -> ImageDataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train / 10,000 test 1x28x28 images, 10 classes."""
    how = (
        "install it with `apt-get install dataset-fashion-mnist`, or run "
        "torchvision.datasets.FashionMNIST(DIR, download=True) on a machine with a network "
        "and pass --data-dir DIR"
    )
    try:
        images, labels, src = _read_split(
            "Fashion-MNIST", "FashionMNIST", split, data_dir, limit, DEBIAN_FASHION_DIR, how
        )
    except MissingFileError:
        if split != "test" or data_dir is not None:
            raise
        if limit is None:
            warnings.warn(
                f"Fashion-MNIST: using the bundled first {BUNDLED_COUNT} test images; install "
                "`dataset-fashion-mnist` (or pass --data-dir) for all 10,000",
                stacklevel=3,
            )
        return load_bundled_fashion_mnist(limit)
    return ImageDataset(
        to_float_images(images),
        torch.as_tensor(labels, dtype=torch.int64),
        list(FASHION_CLASSES),
        "fashion-mnist",
        split,
        src,
    )


def load_mnist(
    *, split: str, data_dir: str | None = None, limit: int | None = None
) -> ImageDataset:
    """MNIST (LeCun et al. 1998): 60,000 train / 10,000 test 1x28x28 digits, 10 classes."""
    how = (
        "run torchvision.datasets.MNIST(DIR, download=True) on a machine with a network, "
        "copy DIR here and pass --data-dir DIR"
    )
    images, labels, src = _read_split("MNIST", "MNIST", split, data_dir, limit, None, how)
    return ImageDataset(
        to_float_images(images),
        torch.as_tensor(labels, dtype=torch.int64),
        list(MNIST_CLASSES),
        "mnist",
        split,
        src,
    )


FASHION_MNIST = register_dataset(
    DatasetSpec(
        "fashion-mnist",
        "Fashion-MNIST 1x28x28, 10 classes; first 1,000 test images bundled, full set from "
        "dataset-fashion-mnist or --data-dir",
        load_fashion_mnist,
        1,
        (28, 28),
        10,
        (0.2860,),
        (0.3530,),
        FASHION_CLASSES,
        # zoattack's own benchmark radii since its first release (no published convention).
        eps={"linf": 0.1, "l2": 1.5},
    ),
    aliases=("fashion_mnist", "fashionmnist", "fmnist"),
    flags={"bundled": BUNDLED_COUNT},
)

MNIST = register_dataset(
    DatasetSpec(
        "mnist",
        "MNIST digits 1x28x28, 10 classes; torchvision layout under --data-dir",
        load_mnist,
        1,
        (28, 28),
        10,
        (0.1307,),
        (0.3081,),
        MNIST_CLASSES,
        # Madry et al. 2018 (Linf 0.3); L2 2.0 as in the MNIST L2 robustness literature.
        eps={"linf": 0.3, "l2": 2.0},
    )
)
