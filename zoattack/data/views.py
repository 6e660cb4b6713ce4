"""Data views: the same images at another input size and channel count, for dimension studies.

A view is written after the data set name: ``NAME@CxHxW``, e.g. ``fashion-mnist@3x32x32`` is
Fashion-MNIST at CIFAR-10's input size (3,072 numbers instead of 784). The suffix is part of the
name everywhere a data set is named (``train``, ``run``, ``defend``, batch plans, model cards,
run settings), so a run records exactly the inputs it saw and weights trained on a view are
looked up under the view's name (``resnet20_fashion-mnist@3x32x32.safetensors``).

How an image is mapped (deterministic, no randomness):

* size: bilinear resampling with antialiasing (``torch.nn.functional.interpolate``), then
  clamped back to [0, 1];
* channels: 1 -> C repeats the grey channel; 3 -> 1 takes the ITU-R 601 luma
  (0.299 R + 0.587 G + 0.114 B). Other channel changes are refused.

Per-channel statistics for models' first layers are the base set's, repeated (1 -> 3) or
luma-weighted (3 -> 1); resampling barely moves them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoattack.data.registry import DatasetSpec, ImageDataset

_VIEW = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)
_LUMA = (0.299, 0.587, 0.114)
MAX_SIDE = 1024


def split_view(name: str) -> tuple[str, tuple[int, int, int] | None]:
    """``"fashion-mnist@3x32x32"`` -> ``("fashion-mnist", (3, 32, 32))``; no ``@`` -> view None.

    Raises ValueError (one line, the form expected) for a malformed view.
    """
    base, at, view = name.partition("@")
    if not at:
        return name, None
    m = _VIEW.match(view)
    hint = "write the view as CxHxW after the data set, e.g. fashion-mnist@3x32x32"
    if m is None:
        raise ValueError(f"data set view {view!r} in {name!r} is not CxHxW; {hint}")
    c, h, w = (int(v) for v in m.groups())
    if c not in (1, 3):
        raise ValueError(f"data set view {name!r}: channels must be 1 or 3, got {c}; {hint}")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(
            f"data set view {name!r}: height and width must be 1..{MAX_SIDE}, got {h}x{w}"
        )
    if not base.strip():
        raise ValueError(f"data set view {name!r} names no data set; {hint}")
    return base.strip(), (c, h, w)


def view_name(base: str, shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    return f"{base}@{c}x{h}x{w}"


def _stats(values: tuple[float, ...] | None, channels: int) -> tuple[float, ...] | None:
    if values is None or len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if len(values) == 3 and channels == 1:
        return (round(sum(w * v for w, v in zip(_LUMA, values, strict=True)), 4),)
    return None  # a model then measures them on the images at hand


def apply_view(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """``(N, C0, H0, W0)`` in [0, 1] -> ``(N, C, H, W)`` in [0, 1] (see the module docstring)."""
    c, h, w = shape
    c0 = int(images.shape[1])
    x = images
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    if c0 != c:
        if c0 == 1:
            x = x.expand(-1, c, -1, -1)
        elif c0 == 3 and c == 1:
            weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * weights).sum(1, keepdim=True).clamp_(0.0, 1.0)
        else:
            raise ValueError(f"a view cannot turn {c0}-channel images into {c} channels")
    return x.contiguous()


def view_spec(base: DatasetSpec, shape: tuple[int, int, int]) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``base`` seen at ``shape``."""
    if base.channels is not None and base.channels not in (1, 3):
        raise ValueError(f"{base.name} has {base.channels} channels; views need 1 or 3")
    name = view_name(base.name, shape)

    def loader(**kwargs: Any) -> ImageDataset:
        from zoattack.models.fit import check_memory, view_bytes

        ds = base.loader(**kwargs)
        n, c0 = len(ds), int(ds.images.shape[1])
        check_memory(
            f"loading {n:,} {name} images",
            {"images at the view's size": view_bytes(n, shape, c0)},
            hint="load fewer images (--images, --limit, --train-images) or a smaller view",
        )
        return ImageDataset(
            apply_view(ds.images, shape),
            ds.labels,
            ds.classes,
            name,
            ds.split,
            f"{ds.source} (view {shape[0]}x{shape[1]}x{shape[2]})",
        )

    c, h, w = shape
    return replace(
        base,
        name=name,
        description=f"{base.description} (seen as {c}x{h}x{w})",
        loader=loader,
        channels=c,
        size=(h, w),
        mean=_stats(base.mean, c),
        std=_stats(base.std, c),
        notes={**base.notes, "view": [c, h, w], "base": base.name},
    )
