"""Adapters for third-party model libraries: ``torchvision:NAME``, ``timm:NAME``,
``robustbench:NAME``.

Every adapter returns a model that takes [0, 1] inputs (normalization inside) and follows one
offline-first rule for weights:

* ``weights=PATH``: build the architecture and load PATH (safetensors, or a PyTorch checkpoint
  read with ``weights_only=True``). Never touches the network.
* ``pretrained=True``: look for the library's checkpoint file where the library itself would
  put it (or in ``model_dir``) and load it from there. When it is not there, raise
  :class:`~zoattack.data.files.MissingFileError` naming the path and how to get it -- unless
  ``download=True``, which runs the library's own download code (hub / Hugging Face / Google
  Drive) for users with a network. Checking first avoids long retry loops on offline machines.

timm and robustbench are optional and imported only when used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoattack.data.files import MissingFileError, shown
from zoattack.errors import UnknownNameError, ZOAttackError
from zoattack.models.layers import NormalizedModel
from zoattack.models.weights import load_into, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingDependencyError(ZOAttackError, ImportError):
    """An optional package (timm, robustbench) is needed for what was asked."""


def require(module: str, pip_name: str | None = None, extra: str = "") -> Any:
    """Import ``module`` or raise one line saying what to ``pip install``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed; run `pip install {pip_name or module}`{extra} "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _wrap(
    net: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    in_channels: int | None,
    net_channels: int,
) -> nn.Module:
    repeat = 1
    if in_channels is not None and in_channels != net_channels:
        if in_channels == 1:
            repeat = net_channels  # gray images through an RGB network
        else:
            raise ValueError(
                f"the network takes {net_channels}-channel inputs, the data has {in_channels}"
            )
    if len(mean) != net_channels:  # e.g. 1-channel data stats for a repeated-RGB network
        mean, std = tuple(mean) * net_channels, tuple(std) * net_channels
    return NormalizedModel(net, mean, std, repeat_channels=repeat)


# --------------------------------------------------------------------------- torchvision


def torchvision_model(
    arch: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | Path | None = None,
    model_dir: str | Path | None = None,
    pretrained: bool = False,
    download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``torchvision.models.<arch>`` behind a Normalize layer (ImageNet statistics by default).

    ``pretrained=True`` uses the architecture's DEFAULT weights: the file is looked up as
    ``model_dir/<file>`` or torch hub's cache ``$TORCH_HOME/hub/checkpoints/<file>`` (the name
    is the last part of the weights URL, e.g. ``resnet18-f37072fd.pth``).
    """
    import torchvision.models as tvm  # type: ignore[import-untyped]

    try:
        builder = tvm.get_model_builder(arch)
    except ValueError:
        raise UnknownNameError("torchvision model", arch, tvm.list_models()) from None
    if pretrained and weights is None:
        wenum = tvm.get_model_weights(arch).DEFAULT
        fname = wenum.url.rsplit("/", 1)[-1]
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        folder = Path(model_dir).expanduser() if model_dir is not None else hub_dir
        path = folder / fname
        if not path.is_file():
            if not download:
                raise MissingFileError(
                    f"pretrained weights {wenum} of torchvision:{arch}",
                    shown(path),
                    f"rerun with --download (torchvision fetches {wenum.url} and checks its "
                    "hash), put that file there, pass --weights FILE, or --random-init for an "
                    "untrained network",
                )
            # torch hub checks the SHA-256 prefix in the file name (torchvision's own check).
            torch.hub.load_state_dict_from_url(
                wenum.url, model_dir=str(folder), progress=False, check_hash=True
            )
        net = builder(weights=None, num_classes=len(wenum.meta["categories"]), **kwargs)
        load_into(net, read_state_dict(path), path, f"torchvision:{arch}")
        tf = wenum.transforms()
        mean = mean or tuple(getattr(tf, "mean", IMAGENET_MEAN))
        std = std or tuple(getattr(tf, "std", IMAGENET_STD))
    else:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        net = builder(weights=None, **kwargs)
        if weights is not None:
            load_into(net, read_state_dict(weights), weights, f"torchvision:{arch}")
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    return _wrap(net, mean, std, in_channels, 3)


# --------------------------------------------------------------------------- timm


def _timm_local_file(arch: str, model_dir: Path) -> Path | None:
    stems = [arch, arch.split(".")[0]]
    for d in (model_dir / arch, model_dir):
        for stem in (*stems, "model", "pytorch_model"):
            for ext in (".safetensors", ".pth", ".bin", ".pt"):
                if (d / f"{stem}{ext}").is_file():
                    return d / f"{stem}{ext}"
    return None


def _hf_cached(cfg: Any) -> Path | None:
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, rev = hub_id.partition("@")
    for fname in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname, revision=rev or None)
        if isinstance(hit, str):
            return Path(hit)
    return None


def timm_model(
    arch: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | Path | None = None,
    model_dir: str | Path | None = None,
    pretrained: bool = False,
    download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(arch)`` behind a Normalize layer using timm's own data config.

    ``pretrained=True`` looks for ``model_dir/<arch>.safetensors`` (or ``.pth``/``.bin``,
    also ``model_dir/<arch>/model.safetensors``) and then the Hugging Face cache; timm is only
    allowed to download with ``download=True``.
    """
    timm = require("timm")
    if not timm.is_model(arch):
        raise UnknownNameError("timm model", arch, timm.list_models())
    create_kw: dict[str, Any] = dict(kwargs)
    if in_channels is not None and in_channels != 3:
        create_kw["in_chans"] = in_channels  # timm adapts the stem itself
    if pretrained and weights is None:
        local = _timm_local_file(arch, Path(model_dir).expanduser()) if model_dir else None
        if local is None:
            cfg = timm.models.get_pretrained_cfg(arch)
            local = _hf_cached(cfg) if cfg is not None else None
        if local is not None:
            create_kw["pretrained_cfg_overlay"] = {"file": str(local)}
        elif not download:
            where = (
                shown(Path(model_dir) / f"{arch}.safetensors")
                if model_dir
                else "the Hugging Face cache ($HF_HOME/hub)"
            )
            raise MissingFileError(
                f"pretrained timm weights for timm:{arch}",
                where,
                "rerun with --download (timm fetches them from the Hugging Face Hub), "
                f"pass --weights FILE or --model-dir DIR (DIR/{arch}.safetensors), or "
                "--random-init for an untrained network",
            )
        if num_classes is not None:
            create_kw["num_classes"] = num_classes
        net = timm.create_model(arch, pretrained=True, **create_kw)
    else:
        if num_classes is not None:
            create_kw["num_classes"] = num_classes
        net = timm.create_model(arch, pretrained=False, **create_kw)
        if weights is not None:
            load_into(net, read_state_dict(weights), weights, f"timm:{arch}")
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean = mean or tuple(cfg.get("mean", IMAGENET_MEAN))
    std = std or tuple(cfg.get("std", IMAGENET_STD))
    channels = in_channels or 3
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return _wrap(net, mean, std, channels, channels)


# --------------------------------------------------------------------------- robustbench

ROBUSTBENCH_DATASETS = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "imagenet": "imagenet",
}
ROBUSTBENCH_THREATS = {
    "linf": "Linf",
    "l2": "L2",
    "corruptions": "corruptions",
    "corruptions_3d": "corruptions_3d",
}


def import_robustbench() -> Any:
    """Import robustbench, pointing ``autoattack`` at PyPI's ``pyautoattack`` first.

    robustbench imports ``autoattack``, which PyPI ships as ``pyautoattack``; and it imports
    ``pkg_resources``, removed in setuptools 81.
    """
    if "autoattack" not in sys.modules:
        try:
            importlib.import_module("autoattack")
        except ImportError:
            try:
                sys.modules["autoattack"] = importlib.import_module("pyautoattack")
            except ImportError:
                pass  # robustbench's own import error below names what is missing
    try:
        return importlib.import_module("robustbench")
    except ImportError as exc:
        hint = (
            "`pip install 'setuptools<81'`"
            if "pkg_resources" in str(exc)
            else "`pip install robustbench pyautoattack 'setuptools<81'`"
        )
        raise MissingDependencyError(
            f"robustbench could not be imported ({exc}); run {hint}"
        ) from None


def robustbench_model(
    name: str,
    *,
    dataset: str | None = None,
    threat_model: str = "Linf",
    weights: str | Path | None = None,
    model_dir: str | Path | None = None,
    pretrained: bool = True,
    download: bool = False,
    **_: Any,
) -> nn.Module:
    """A RobustBench model-zoo entry; its networks already take [0, 1] inputs.

    Weights come from ``weights=PATH`` or, as RobustBench lays them out,
    ``model_dir/<dataset>/<threat_model>/<name>.pt`` (``model_dir`` defaults to ``./models``,
    RobustBench's default). A RobustBench model without weights is meaningless, so one of the
    two must exist; ``download=True`` lets RobustBench fetch the file (Google Drive).
    """
    rb_dataset = ROBUSTBENCH_DATASETS.get((dataset or "cifar10").lower())
    if rb_dataset is None:
        raise ValueError(
            f"robustbench models exist for cifar10, cifar100 and imagenet, not {dataset!r}"
        )
    tm = ROBUSTBENCH_THREATS.get(threat_model.lower())
    if tm is None:
        raise ValueError(
            f"--threat-model must be one of Linf, L2, corruptions, got {threat_model!r}"
        )
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    entries = model_dicts[BenchmarkDataset(rb_dataset)][ThreatModel(tm)]
    if name not in entries:
        raise UnknownNameError(f"robustbench {rb_dataset}/{tm} model", name, entries)
    if weights is not None:
        net = entries[name]["model"]()
        load_into(net, read_state_dict(weights), weights, f"robustbench:{name}")
        return net.eval()
    folder = Path(model_dir).expanduser() if model_dir is not None else Path("models")
    path = folder / rb_dataset / tm / f"{name}.pt"
    if not path.is_file() and not download:
        raise MissingFileError(
            f"robustbench checkpoint for {name}",
            shown(path),
            f"on a machine with a network run robustbench.utils.load_model('{name}', "
            f"dataset='{rb_dataset}', threat_model='{tm}', model_dir=DIR) and copy "
            "DIR here (--model-dir DIR), or pass --weights FILE",
        )
    from robustbench.utils import load_model

    return load_model(
        model_name=name, dataset=rb_dataset, threat_model=tm, model_dir=str(folder)
    ).eval()
