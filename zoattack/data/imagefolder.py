"""A folder of class subfolders (torchvision's ImageFolder layout), read with Pillow.

``data_dir/<split>/<class>/*.png`` when a ``train``/``test`` (``test`` also accepts ``val``)
subfolder exists, else ``data_dir/<class>/*`` for either split. Classes are the sorted subfolder
names. "First N" is taken round-robin over classes (one image of each class in turn, files in
sorted order), so a small ``limit`` still covers every class, and the order never depends on
the file system. Images are grayscale (1 channel) when every selected file is, else RGB; they
must share one size unless ``size`` is given, in which case each is resized to size x size.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from zoattack.data.files import BadFileError, MissingFileError, describe, shown
from zoattack.data.registry import DatasetSpec, ImageDataset, register_dataset, to_float_images

if TYPE_CHECKING:
    from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "I", "I;16", "F", "LA"}


def _root(data_dir: str | None, split: str) -> Path:
    if data_dir is None:
        raise ValueError(
            "the imagefolder data set needs --data-dir DIR (a folder of class "
            "subfolders, optionally under train/ and test/)"
        )
    base = Path(data_dir).expanduser()
    if not base.is_dir():
        raise MissingFileError(
            "image folder", shown(base), "pass --data-dir pointing at a folder of class subfolders"
        )
    for sub in (split,) if split == "train" else (split, "val"):
        if (base / sub).is_dir():
            return base / sub
    return base


def _open_image(path: Path) -> Image.Image:
    """The decoded image at ``path``; a file Pillow cannot decode is one line naming it."""
    from PIL import Image

    how = "remove it from the folder or replace it with a valid image"
    if path.stat().st_size == 0:
        raise BadFileError(path, "an image", "the file is empty", how)
    try:
        with warnings.catch_warnings():
            # A decompression bomb is an error here, not a warning: files are untrusted.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.copy()
    except Exception as exc:  # UnidentifiedImageError, truncated data, bombs, codec errors
        raise BadFileError(path, "a readable image", describe(exc), how) from None


def _round_robin(per_class: list[list[Path]], limit: int | None) -> list[tuple[Path, int]]:
    order: list[tuple[Path, int]] = []
    depth = max((len(f) for f in per_class), default=0)
    for i in range(depth):
        for label, files in enumerate(per_class):
            if i < len(files):
                order.append((files[i], label))
                if limit is not None and len(order) >= limit:
                    return order
    return order


def load_imagefolder(
    *, split: str, data_dir: str | None = None, limit: int | None = None, size: int | None = None
) -> ImageDataset:
    """Images from ``data_dir`` in ImageFolder layout; see the module docstring for the rules."""
    from PIL import Image

    root = _root(data_dir, split)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [
        sorted(p for p in (root / c).iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        for c in classes
    ]
    picked = _round_robin(per_class, limit)
    if not picked:
        raise MissingFileError(
            f"no images for the {split} split",
            shown(root / "<class>/*.png"),
            "put images in one subfolder per class",
        )
    pics = []
    for path, _ in picked:
        pics.append(_open_image(path))
    gray = all(im.mode in _GRAY_MODES for im in pics)
    arrays = []
    for im in pics:
        im = im.convert("L" if gray else "RGB")
        if size is not None:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first, other = sorted(shapes)[:2]
        raise ValueError(
            f"images in {root} differ in size ({first[1]}x{first[2]} vs "
            f"{other[1]}x{other[2]}); pass size=N (--image-size N) to resize them"
        )
    labels = torch.tensor([lab for _, lab in picked], dtype=torch.int64)
    return ImageDataset(
        to_float_images(np.stack(arrays)), labels, classes, "imagefolder", split, str(root)
    )


IMAGEFOLDER = register_dataset(
    DatasetSpec(
        "imagefolder",
        "a folder of class subfolders (optionally under train/ and test/), PNG/JPEG "
        "via Pillow; --data-dir required",
        load_imagefolder,
        None,
        None,
        None,
        None,
        None,
        # Folders of photos are how ImageNet-style data reaches torchvision/timm models:
        # the ImageNet convention (RobustBench's Linf 4/255; L2 3.0).
        eps={"linf": 4 / 255, "l2": 3.0},
    ),
    aliases=("image_folder", "folder"),
)
