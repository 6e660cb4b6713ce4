"""scikit-learn's 8x8 handwritten digits: a real image data set that is always available.

1,797 images with pixel values 0..16, kept at 1x8x8 and scaled to [0, 1]. scikit-learn has no
official split, so the first 1,437 images (80%) are ``train`` and the last 360 are ``test``:
the file is ordered by writer, so this split is close to writer-disjoint and needs no RNG.
"""

from __future__ import annotations

import torch

from zoattack.data.registry import DatasetSpec, ImageDataset, register_dataset, to_float_images

DIGITS_TRAIN = 1437


def load_digits(
    *, split: str, data_dir: str | None = None, limit: int | None = None
) -> ImageDataset:
    """Digits (UCI optical recognition of handwritten digits): 1x8x8, 10 classes."""
    from sklearn.datasets import load_digits as _sk_load  # sklearn import is slow; load lazily

    d = _sk_load()
    sl = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    images, labels = d.images[sl][:limit], d.target[sl][:limit]
    return ImageDataset(
        to_float_images(images, scale=16.0),
        torch.as_tensor(labels, dtype=torch.int64),
        [str(i) for i in range(10)],
        "digits",
        split,
        "sklearn.datasets.load_digits",
    )


DIGITS = register_dataset(
    DatasetSpec(
        "digits",
        "scikit-learn 8x8 digits as 1x8x8 in [0,1]; first 1,437 train, last 360 test; "
        "always available",
        load_digits,
        1,
        (8, 8),
        10,
        (0.3053,),
        (0.3760,),
        tuple(str(i) for i in range(10)),
        # No published convention for these 8x8 images (17 grey levels). Linf 0.1 as for
        # Fashion-MNIST (1.6 grey levels); L2 0.5: Fashion-MNIST's 1.5 scaled by sqrt(64/784)
        # (0.43), the same root-mean-square change per pixel, rounded up.
        eps={"linf": 0.1, "l2": 0.5},
    ),
    flags={"offline": True},
)
