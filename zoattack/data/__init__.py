"""Data sets as fixed in-memory tensors: float32 images in [0, 1] ``(N, C, H, W)``, int64 labels.

Registered names (``zoattack list datasets``): ``fashion-mnist`` (first 1,000 test images ship
with the package), ``mnist``, ``cifar10`` (torchvision on-disk layouts), ``digits``
(scikit-learn, always available) and ``imagefolder``. Use :func:`load_dataset`.

Any of them can be seen at another input size: ``NAME@CxHxW`` (e.g. ``fashion-mnist@3x32x32``,
Fashion-MNIST at CIFAR-10's 3x32x32) resizes and sets the channel count; see
:mod:`zoattack.data.views`.
"""

from __future__ import annotations

import importlib

from zoattack.data.files import MissingFileError
from zoattack.data.mnist import load_bundled_fashion_mnist
from zoattack.data.registry import (
    DATASETS,
    DatasetSpec,
    ImageDataset,
    dataset_spec,
    list_datasets,
    load_dataset,
)
from zoattack.data.views import apply_view, split_view

# Loader modules register on import; this order is `zoattack list datasets`' order.
for _module in ("mnist", "cifar", "digits", "imagefolder"):
    importlib.import_module(f"zoattack.data.{_module}")

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageDataset",
    "MissingFileError",
    "apply_view",
    "dataset_spec",
    "list_datasets",
    "load_bundled_fashion_mnist",
    "load_dataset",
    "split_view",
]
