"""The data-set registry and the in-memory form every loader returns.

Attacks need a fixed, small, fully materialised batch of images in pixel space, not a streaming
pipeline, so every loader returns one :class:`ImageDataset` holding float32 images in [0, 1]
shaped ``(N, C, H, W)`` and int64 labels. "First N" (``limit``) is the only subset rule, so the
same command selects the same images on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from zoattack.registry import Entry, Registry

SPLITS = ("train", "test")


@dataclass
class ImageDataset:
    """A materialised labelled image set.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class indices into ``classes``.
        classes: class names, index = label.
        name: registry name of the data set.
        split: ``"train"`` or ``"test"``.
        source: where the data was read from (a path, or "bundled ..."), for model cards and logs.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    name: str
    split: str
    source: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def take(self, indices: list[int]) -> ImageDataset:
        """The examples at ``indices`` (data-set positions), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(
            self.images[idx], self.labels[idx], self.classes, self.name, self.split, self.source
        )

    def head(self, n: int) -> ImageDataset:
        """The first ``n`` examples (all of them when ``n >= len(self)``)."""
        return ImageDataset(
            self.images[:n], self.labels[:n], self.classes, self.name, self.split, self.source
        )


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a data set before any file is read.

    ``channels``, ``size`` and ``num_classes`` are None where they depend on the files
    (``imagefolder``); ``mean``/``std`` are the per-channel training-set statistics that zoo
    models fold into their first layer.
    """

    name: str
    description: str
    loader: Callable[..., ImageDataset]
    channels: int | None
    size: tuple[int, int] | None
    num_classes: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classes: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)
    # The threat model users of this data set attack at by convention: radius per norm
    # (see :func:`conventional_eps`; empty: the package-wide default).
    eps: dict[str, float] = field(default_factory=dict)

    def __call__(self, **kwargs: Any) -> ImageDataset:
        return self.loader(**kwargs)


DATASETS: Registry[ImageDataset] = Registry("dataset")


def register_dataset(
    spec: DatasetSpec, *, aliases: tuple[str, ...] = (), flags: dict[str, Any] | None = None
) -> DatasetSpec:
    shape = (
        f"{spec.channels}x{spec.size[0]}x{spec.size[1]}"
        if spec.channels is not None and spec.size is not None
        else "from files"
    )
    base: dict[str, Any] = {"shape": shape, "classes": spec.num_classes or "from files"}
    if spec.eps:  # shown by `zoattack list datasets`
        base["eps"] = " ".join(f"{n}:{eps_text(e)}" for n, e in spec.eps.items())
    DATASETS.add(Entry(spec.name, spec, spec.description, {**base, **(flags or {})}, aliases))
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name`` (aliases and ``-``/``_`` accepted).

    ``NAME@CxHxW`` is a view of ``NAME`` resized to ``HxW`` with ``C`` channels (see
    :mod:`zoattack.data.views`); a malformed view is a ValueError naming the expected form.
    """
    from zoattack.data.views import split_view, view_spec

    base, shape = split_view(name)
    factory = DATASETS.get(base).factory
    assert isinstance(factory, DatasetSpec)
    return factory if shape is None else view_spec(factory, shape)


# ImageNet-sized inputs (224x224 and up: ImageNet models from torchvision / timm):
# RobustBench's ImageNet Linf threat model and the common L2 radius at that size (Engstrom et
# al.'s robustness library, Salman et al. 2020).
IMAGENET_EPS = {"linf": 4 / 255, "l2": 3.0}
IMAGENET_SIZE = 224


def conventional_eps(dataset: str | None, norm: str) -> tuple[float, str]:
    """The radius a ``norm`` attack on ``dataset`` uses when no eps is given, and its source.

    The data set's registered convention (CIFAR-10 Linf 8/255 and L2 0.5, MNIST 0.3 and 2.0,
    ...); inputs of 224x224 and up (an ImageNet-sized view or spec) take the ImageNet
    convention; otherwise, and for a name that is not registered (reported where the data is
    loaded), the package default :data:`zoattack.norms.DEFAULT_EPS`.
    Returns e.g. ``(8/255, "cifar10 convention")``.
    """
    from zoattack.errors import UnknownNameError
    from zoattack.norms import DEFAULT_EPS

    key = norm.lower()
    fallback = (DEFAULT_EPS.get(key, 0.0), "zoattack default")
    if dataset is None:
        return fallback
    try:
        spec = dataset_spec(dataset)
    except (UnknownNameError, ValueError):
        return fallback
    if spec.size is not None and min(spec.size) >= IMAGENET_SIZE and key in IMAGENET_EPS:
        h, w = spec.size
        return IMAGENET_EPS[key], f"ImageNet-sized input ({h}x{w}) convention"
    if key in spec.eps:
        return spec.eps[key], f"{spec.notes.get('base', spec.name)} convention"
    return fallback


def eps_text(eps: float) -> str:
    """``8/255`` for a radius that is a whole number of 8-bit grey levels, else ``0.5``."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-9 and 0 < round(levels) < 255 and eps < 1:
        return f"{round(levels)}/255"
    return f"{eps:g}"


def load_dataset(
    name: str,
    *,
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> ImageDataset:
    """Load ``split`` of data set ``name`` as float32 images in [0, 1] and int64 labels.

    Args:
        name: a registered name (see :func:`list_datasets`), e.g. ``"fashion-mnist"``, or a
            view of one, ``"fashion-mnist@3x32x32"`` (resized, grey repeated to RGB).
        split: ``"train"`` or ``"test"``.
        data_dir: the root to read from; each loader documents its layout. None uses the
            loader's default (``$ZOATTACK_DATA_DIR`` or ``./data``, or a system/bundled copy).
        limit: keep only the first ``limit`` examples (deterministic; no shuffling).
        options: loader-specific extras (``imagefolder`` takes ``size``).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists close matches).
        MissingFileError: the files are not there; the message names the expected path and
            how to get the files.
        ValueError: bad ``split`` or ``limit``.
    """
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 image, got {limit}")
    ds = spec.loader(split=split, data_dir=data_dir, limit=limit, **options)
    if ds.images.dtype != torch.float32 or ds.labels.dtype != torch.int64:  # loader contract
        raise AssertionError(f"loader for {name} returned {ds.images.dtype}/{ds.labels.dtype}")
    return ds


MAX_INDICES = 10_000_000
INDICES_FORM = "e.g. 0:100,250,300:400 (START:STOP excludes STOP)"


def parse_indices(text: str, option: str = "--indices") -> list[int]:
    """Data-set indices from ``"0:100,250,300:400"``: comma-separated indices and
    ``START:STOP`` ranges (STOP excluded, as in Python), kept in the order given.

    Raises ValueError (one line naming ``option``) for a malformed part, an empty range, a
    negative index or an index given twice. Whether they exist is checked against the data
    (:func:`check_indices`).
    """
    out: list[int] = []
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError(f"{option} is empty; give indices, {INDICES_FORM}")
    for part in parts:
        try:
            if ":" in part:
                a, _, b = part.partition(":")
                lo, hi = int(a), int(b)
                if hi - lo > MAX_INDICES:
                    raise ValueError(
                        f"{option}: the range {part} holds more indices than any test split "
                        f"(at most {MAX_INDICES:,})"
                    )
                if hi <= lo:
                    raise ValueError(f"{option}: the range {part} is empty (STOP must be > START)")
                out.extend(range(lo, hi))
            else:
                out.append(int(part))
        except ValueError as exc:
            if str(exc).startswith(option):
                raise
            raise ValueError(f"{option}: cannot read {part!r}; {INDICES_FORM}") from None
    if min(out) < 0:
        raise ValueError(f"{option}: indices are >= 0, got {min(out)}")
    seen: set[int] = set()
    for i in out:
        if i in seen:
            raise ValueError(f"{option}: index {i} is given twice")
        seen.add(i)
    return out


def check_indices(indices: list[int], available: int, name: str, option: str = "--indices") -> None:
    """Refuse indices past the ``available`` test images of data set ``name``."""
    bad = [i for i in indices if i >= available]
    if bad:
        raise ValueError(
            f"{option}: {name} has {available:,} test images (indices 0-{available - 1}), "
            f"got {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}"
        )


def load_test_images(
    name: str,
    *,
    data_dir: str | None,
    images: int,
    indices: list[int] | None,
    load: Callable[..., ImageDataset] | None = None,
) -> ImageDataset:
    """The first ``images`` test images of ``name``, or those at ``indices`` (checked to
    exist). ``load`` replaces :func:`load_dataset` (e.g. one that fetches missing files)."""
    load = load or load_dataset
    if indices is None:
        return load(name, split="test", data_dir=data_dir, limit=images)
    data = load(name, split="test", data_dir=data_dir, limit=max(indices) + 1)
    check_indices(indices, len(data), data.name)
    return data.take(indices)


def list_datasets(pattern: str | None = None, **flags: Any) -> list[str]:
    return DATASETS.names(pattern, **flags)


def to_float_images(array: Any, scale: float = 255.0) -> Tensor:
    """uint8 ``(N, H, W)`` or ``(N, C, H, W)`` array -> float32 ``(N, C, H, W)`` in [0, 1]."""
    t = torch.as_tensor(array)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    return t.to(torch.float32).div_(scale).clamp_(0.0, 1.0).contiguous()
