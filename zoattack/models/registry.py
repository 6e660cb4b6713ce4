"""The model registry and :func:`create_model`, the one way zoattack builds a victim.

Names: zoo architectures (``resnet20``, ``small_cnn``) and adapter prefixes used as
``torchvision:NAME``, ``timm:NAME``, ``robustbench:NAME``. Every model returned takes images in
[0, 1] (normalization is its first layer) and is in eval mode on the requested device.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoattack.data import ImageDataset, dataset_spec
from zoattack.data.files import BadFileError, MissingFileError, describe, shown
from zoattack.errors import UnknownNameError
from zoattack.models import adapters
from zoattack.models.fit import (
    check_memory,
    describe_mismatch,
    parameter_bytes,
    safetensors_shapes,
    state_shapes,
)
from zoattack.models.weights import (
    _ship_hint,
    card_path,
    load_into,
    read_card,
    read_state_dict,
    shipped_weights,
    weights_dir,
    weights_filename,
)
from zoattack.models.zoo import (
    ResNet20,
    ResNet32,
    ResNet44,
    ResNet56,
    SmallCNN,
    ZooModel,
    skeleton,
)
from zoattack.registry import Entry, Recipe, Registry

# remote: and defended: live above this layer and register themselves when imported.
MODELS: Registry[nn.Module] = Registry("model", plugins=("zoattack.remote", "zoattack.defense"))


def _pretrained_flag(name: str) -> str | bool:
    ds = [d for m, d in shipped_weights() if m == name]
    return ",".join(ds) if ds else False


MODELS.add(
    Entry(
        "resnet20",
        ResNet20,
        "CIFAR ResNet-20 (He et al. 2016): 3x3 basic blocks, 16/32/64 channels, option-A "
        "shortcuts, ~0.27M params; any in-channels/classes/size",
        {
            "zoo": True,
            "trainable": True,
            "pretrained": _pretrained_flag("resnet20"),
            "published": "cifar10",
        },
        ("resnet_20",),
        # What the shipped weights were trained with (`zoattack train` defaults).
        recipe=Recipe(epochs=4, lr=0.1, optimizer="sgd", weight_decay=5e-4, augment="none"),
    )
)
# The deeper CIFAR ResNets: no shipped weights; on cifar10 they load Idelbayev's published
# checkpoints (zoattack/models/download.py, pinned by SHA-256) from the torch hub cache.
for _cls, _params in ((ResNet32, "0.46"), (ResNet44, "0.66"), (ResNet56, "0.85")):
    MODELS.add(
        Entry(
            _cls.arch,
            _cls,
            f"CIFAR ResNet-{_cls.arch[6:]} (He et al. 2016): {_cls.blocks} blocks per stage, "
            f"option-A shortcuts, ~{_params}M params",
            {
                "zoo": True,
                "trainable": True,
                "pretrained": _pretrained_flag(_cls.arch),
                "published": "cifar10",
            },
        )
    )
MODELS.add(
    Entry(
        "small_cnn",
        SmallCNN,
        "2 conv (32, 64) + 2 fc (128, classes) CNN; fast victim for tests and demos",
        {"zoo": True, "trainable": True, "pretrained": _pretrained_flag("small_cnn")},
        ("smallcnn", "cnn"),
        recipe=Recipe(epochs=3, lr=1e-3, optimizer="adam", weight_decay=0.0, augment="none"),
    )
)
# Robust victims: the same architectures, adversarially trained (`zoattack train` picks the
# recipe from "robust"); their weights ship only with a card that records it.
ROBUST_THREAT = "linf:0.1"  # NORM:EPS
MODELS.add(
    Entry(
        "small_cnn_robust",
        SmallCNN,
        "small_cnn adversarially trained (PGD, Linf 0.1, Madry et al. 2018): a victim "
        "black-box attacks must work for",
        {
            "zoo": True,
            "trainable": True,
            "pretrained": _pretrained_flag("small_cnn_robust"),
            "robust": ROBUST_THREAT,
            "arch": "small_cnn",
        },
    )
)
MODELS.add(
    Entry(
        "resnet20_robust",
        ResNet20,
        "resnet20 adversarially trained (PGD, Linf 0.1, Madry et al. 2018)",
        {
            "zoo": True,
            "trainable": True,
            "pretrained": _pretrained_flag("resnet20_robust"),
            "robust": ROBUST_THREAT,
            "arch": "resnet20",
        },
    )
)
MODELS.add(
    Entry(
        "torchvision",
        adapters.torchvision_model,
        "torchvision:NAME, any torchvision.models classifier (ImageNet stats inside); its "
        "DEFAULT pretrained weights from the torch hub cache / --model-dir (--download "
        "fetches them), or --weights FILE, or --random-init",
        {"adapter": True},
    )
)
MODELS.add(
    Entry(
        "timm",
        adapters.timm_model,
        "timm:NAME, any timm model with its own data config inside; needs `pip install "
        "timm`; pretrained weights from the HF cache / --model-dir (--download fetches "
        "them), or --weights FILE, or --random-init",
        {"adapter": True, "requires": "timm"},
    )
)
MODELS.add(
    Entry(
        "robustbench",
        adapters.robustbench_model,
        "robustbench:NAME with --threat-model Linf, L2 or corruptions; checkpoints from "
        "--model-dir (DIR/<dataset>/<threat>/NAME.pt) or --weights FILE",
        {"adapter": True, "requires": "robustbench"},
    )
)


# Adapters whose pretrained weights come from their library's cache (or --download).
PRETRAINED_ADAPTERS = ("torchvision", "timm")


def default_pretrained(name: str, weights: object | None, *, random_init: bool = False) -> bool:
    """Whether a command builds ``name`` with its pretrained weights: always, unless a weights
    file is given or ``random_init`` (``--random-init``) asks for an untrained network; for zoo
    models and the torchvision/timm adapters (robustbench always loads its checkpoint; remote
    and defended models are what they are)."""
    if weights is not None or random_init:
        return False
    prefix, sep, _ = name.partition(":")
    return not sep or prefix.lower() in PRETRAINED_ADAPTERS


def check_random_init(name: str, weights: object | None) -> None:
    """``--random-init`` builds an untrained zoo / torchvision / timm network, nothing else."""
    if weights is not None:
        raise ValueError("--random-init builds an untrained network; drop it or --weights")
    prefix, sep, _ = name.partition(":")
    if sep and prefix.lower() not in PRETRAINED_ADAPTERS:
        raise ValueError(
            f"--random-init applies to zoo, torchvision: and timm: models, not {prefix}:NAME"
        )


def list_models(pattern: str | None = None, **flags: Any) -> list[str]:
    """Registered names; adapters are listed by prefix (use them as ``prefix:NAME``)."""
    return MODELS.names(pattern, **flags)


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dataset_kwargs(dataset: str | ImageDataset | None) -> tuple[str | None, dict[str, Any]]:
    """Data set name and the constructor arguments it implies (channels, classes, size, stats)."""
    if dataset is None:
        return None, {}
    if isinstance(dataset, ImageDataset):
        c, h, w = dataset.image_shape
        kw: dict[str, Any] = {
            "in_channels": c,
            "num_classes": dataset.num_classes,
            "input_size": (h, w),
        }
        spec = None
        try:
            spec = dataset_spec(dataset.name)
        except UnknownNameError:
            pass
        if spec is not None and spec.mean is not None:
            kw["mean"], kw["std"] = spec.mean, spec.std
        else:  # e.g. imagefolder: statistics of the images at hand
            x = dataset.images.transpose(0, 1).reshape(c, -1)
            kw["mean"] = tuple(round(float(v), 4) for v in x.mean(1))
            kw["std"] = tuple(round(max(float(v), 1e-3), 4) for v in x.std(1))
        return dataset.name, kw
    spec = dataset_spec(dataset)
    kw = {}
    if spec.channels is not None:
        kw["in_channels"] = spec.channels
    if spec.num_classes is not None:
        kw["num_classes"] = spec.num_classes
    if spec.size is not None:
        kw["input_size"] = spec.size
    if spec.mean is not None:
        kw["mean"], kw["std"] = spec.mean, spec.std
    return spec.name, kw


def _create_zoo(
    name: str,
    cls: type[ZooModel],
    ds_name: str | None,
    ds_kw: dict[str, Any],
    *,
    weights: str | Path | None,
    model_dir: str | Path | None,
    pretrained: bool,
    generator: torch.Generator | None,
    kwargs: dict[str, Any],
    download: bool = False,
    sha256: str | None = None,
) -> nn.Module:
    path: Path | None = None
    published = None
    if sha256 is not None and (weights is not None or not pretrained):
        raise ValueError(
            "--sha256 checks published pretrained weights; it does not apply with --weights"
        )
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"weights file for {name}",
                shown(path),
                "pass the .safetensors written by `zoattack train` or a .pt/.pth state dict",
            )
    elif pretrained:
        if ds_name is None:
            raise ValueError(
                f"pretrained {name} weights are per data set; pass dataset= "
                f"(shipped: {', '.join(f'{m} on {d}' for m, d in shipped_weights())})"
            )
        fname = weights_filename(name, ds_name)
        candidates = [Path(model_dir).expanduser() / fname] if model_dir is not None else []
        candidates.append(weights_dir() / fname)
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None and sha256 is not None:
            raise ValueError(
                f"--sha256 checks published checkpoints; {name} on {ds_name} loads {shown(path)}"
                " (zoattack's own weights), so drop --sha256"
            )
        if path is None:
            from zoattack.models.download import published_file

            published = published_file(
                name,
                ds_name,
                download=download,
                model_dir=model_dir,
                also_expected=candidates,
                sha256=sha256,
            )
        if published is not None:
            path, pub = published
            ds_kw = {**ds_kw, "mean": pub.mean, "std": pub.std}
        if path is None:
            raise MissingFileError(
                f"no pretrained {name} weights for {ds_name}",
                [shown(p) for p in candidates],
                _ship_hint(name, ds_name),
            )
    config: dict[str, Any] = {}
    card = read_card(path) if path is not None else None
    if card is not None:
        if card.get("model") not in (None, name):
            raise ValueError(f"{path} holds {card.get('model')} weights (per its card), not {name}")
        if ds_name is not None and card.get("dataset") not in (None, ds_name):
            warnings.warn(
                f"{path} was trained on {card.get('dataset')}, used here with {ds_name}",
                stacklevel=3,
            )
        arch = card.get("architecture", {})
        found = arch.get("config", {}) if isinstance(arch, dict) else None
        if not isinstance(found, dict):
            raise BadFileError(
                card_path(str(path)),
                "a zoattack model card",
                "its architecture.config is not an object",
                "delete the card (the weights alone still load) or regenerate it",
            )
        config = dict(found)
    # Precedence: explicit kwargs > the card that came with the weights > the data set; implied
    # values the architecture does not take (resnet20 has no input size) are dropped.
    accepted = inspect.signature(cls).parameters
    implied = {k: v for k, v in {**ds_kw, **config}.items() if k in accepted}
    args = {**implied, **kwargs}
    try:
        # Shapes first, on the meta device: weights that do not fit, or a model too large for
        # memory (a card asking for hidden=300000), are refused before anything is allocated.
        with skeleton():
            shell = cls(**args, generator=generator)
    except (TypeError, OverflowError, RuntimeError, ValueError) as exc:
        if not config:
            raise
        # Settings from an untrusted card that the architecture cannot take.
        raise BadFileError(
            card_path(str(path)),
            "a usable zoattack model card",
            f"its architecture settings {config} do not build {name}: {describe(exc)}",
            "delete the card (the weights alone still load) or regenerate it",
        ) from None
    what = f"{name} {shell.config()}"
    from_card = f" (architecture from the card {shown(card_path(str(path)))})" if config else ""
    state = None
    if path is not None:
        found = safetensors_shapes(path) if path.suffix == ".safetensors" else None
        if found is None or published is not None:
            state = _read_state(path, published)
            found = {k: tuple(v.shape) for k, v in state.items()}
        detail = describe_mismatch(state_shapes(shell), found)
        if detail:
            raise ValueError(f"weights in {path} do not fit {what}{from_card}: {detail}")
    check_memory(f"building {what}{from_card}", {"parameters": parameter_bytes(shell)})
    model = cls(**args, generator=generator)
    if path is not None:
        load_into(model, state if state is not None else _read_state(path, published), path, what)
    return model


def _read_state(path: Path, published: Any) -> dict[str, torch.Tensor]:
    state = read_state_dict(path)
    return published[1].convert(state) if published is not None else state


def create_model(
    name: str,
    *,
    dataset: str | ImageDataset | None = None,
    weights: str | Path | None = None,
    model_dir: str | Path | None = None,
    pretrained: bool = False,
    device: str | torch.device = "cpu",
    threat_model: str | None = None,
    download: bool = False,
    sha256: str | None = None,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model that takes [0, 1] images, in eval mode on ``device``.

    Args:
        name: ``resnet20``, ``small_cnn``, or ``torchvision:NAME`` / ``timm:NAME`` /
            ``robustbench:NAME`` (see :func:`list_models`).
        dataset: a registered data-set name or a loaded :class:`ImageDataset`; sets input
            channels, classes, input size and normalization statistics, and picks the shipped
            weights for ``pretrained=True``.
        weights: a checkpoint file (safetensors, or a PyTorch state dict read with
            ``weights_only=True``). For zoo models a JSON card next to it (as written by
            ``zoattack train``) supplies the exact architecture.
        model_dir: where to look for pretrained files before the package/library default.
        pretrained: zoo: load ``<name>_<dataset>.safetensors`` from ``model_dir`` or the
            weights shipped in the package (``resnet20`` and ``small_cnn`` on
            ``fashion-mnist``). Adapters: the library's pretrained file, found offline.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``.
        threat_model: robustbench only: ``Linf`` (default), ``L2`` or ``corruptions``.
        download: allow adapters to fetch missing pretrained files over the network; without
            it a missing file raises :class:`MissingFileError` immediately. Zoo models fetch
            only published checkpoints, pinned by URL and SHA-256 (``zoattack.models.download``).
        sha256: the checksum of a published checkpoint the user verified, for one without a
            pinned SHA-256 (a pinned one must agree); the cached or downloaded file must match.
        generator: initialises zoo weights (no global RNG); OS entropy when None.
        kwargs: passed to the architecture (e.g. ``shortcut="B"`` for resnet20, ``mean``/``std``).

    Raises:
        UnknownNameError: unknown name (close matches listed).
        MissingFileError: weights not found; names the path and how to get them.
        MissingDependencyError: timm / robustbench not installed.
        ValueError: weights that do not fit the architecture, bad options.

    Example:
        >>> model = create_model("resnet20", dataset="fashion-mnist", pretrained=True)
    """
    prefix, sep, arch = name.partition(":")
    entry = MODELS.get(prefix)
    dev = _device(device)
    ds_name, ds_kw = _dataset_kwargs(dataset)
    if entry.flags.get("adapter"):
        if sha256 is not None:
            raise ValueError(
                f"--sha256 checks published zoo checkpoints; {entry.name}: models use their "
                "library's own files"
            )
        if not sep or not arch:
            raise ValueError(
                f"{entry.name} is an adapter: use {entry.name}:NAME, e.g. "
                + {
                    "torchvision": "torchvision:resnet18",
                    "timm": "timm:resnet18",
                    "robustbench": "robustbench:Standard",
                    "remote": "remote:http://127.0.0.1:8000",
                    "defended": "defended:runs/defense",
                }[entry.name]
            )
        if entry.name in ("remote", "defended"):
            # Their own files/servers say what they are; the data set only cross-checks shapes.
            model = entry.factory(arch, dataset=dataset, device=dev, **kwargs)
        elif entry.name == "robustbench":
            model = adapters.robustbench_model(
                arch,
                dataset=ds_name or "cifar10",
                threat_model=threat_model or "Linf",
                weights=weights,
                model_dir=model_dir,
                download=download,
            )
        else:
            adapter_kw: dict[str, Any] = {
                k: ds_kw[k] for k in ("in_channels", "num_classes", "mean", "std") if k in ds_kw
            }
            if pretrained and weights is None:  # the library's own head and statistics
                adapter_kw = {k: v for k, v in adapter_kw.items() if k == "in_channels"}
            model = entry.factory(
                arch,
                **{**adapter_kw, **kwargs},
                weights=weights,
                model_dir=model_dir,
                pretrained=pretrained,
                download=download,
            )
    else:
        if sep:
            raise ValueError(f"{entry.name} is a zoo model and takes no ':NAME' suffix")
        if threat_model is not None:
            raise ValueError("threat_model only applies to robustbench:NAME models")
        model = _create_zoo(
            entry.name,
            entry.factory,  # type: ignore[arg-type]  # zoo entries register ZooModel classes
            ds_name,
            ds_kw,
            weights=weights,
            model_dir=model_dir,
            pretrained=pretrained,
            generator=generator,
            kwargs=kwargs,
            download=download,
            sha256=sha256,
        )
    return model.to(dev).eval()
