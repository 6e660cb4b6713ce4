"""Reading user checkpoints, and the safetensors + JSON model cards zoattack writes and ships.

What zoattack ships and writes is safetensors (no code execution on load). What users pass may
be any PyTorch checkpoint, so it is read with ``torch.load(..., weights_only=True)``; the common
wrappers (``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` prefixes from
DataParallel) are unwrapped so a checkpoint saved by a training script loads as-is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoattack.data.files import BadFileError, MissingFileError, describe, shown

CARD_FORMAT = "zoattack-model-card/1"
_REDO = (
    "it may be truncated or not a weights file at all; download or export it again "
    "(e.g. `zoattack train --out FILE.safetensors`)"
)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")


def weights_dir() -> Path:
    """The package folder holding shipped ``<model>_<dataset>.safetensors`` + ``.json`` cards."""
    return Path(str(resources.files("zoattack.models") / "weights"))


def shipped_weights() -> list[tuple[str, str]]:
    """``(model, dataset)`` pairs shipped in the package, e.g. ``("resnet20", "fashion-mnist")``."""
    pairs = []
    for p in sorted(weights_dir().glob("*.safetensors")):
        card = read_card(p)
        if card is not None and "model" in card and "dataset" in card:
            pairs.append((card["model"], card["dataset"]))
    return pairs


def weights_filename(model: str, dataset: str) -> str:
    return f"{model}_{dataset}.safetensors"


def card_path(weights: str | Path) -> Path:
    """The JSON card that sits next to a weights file (same stem, ``.json``)."""
    return Path(weights).with_suffix(".json")


def read_card(weights: str | Path) -> dict[str, Any] | None:
    """The card next to ``weights``, else the copy inside a zoattack safetensors file, else None."""
    p = card_path(weights)
    how = "delete or regenerate it (zoattack train writes the card next to the weights)"
    if p.is_file():
        try:
            card = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, OSError, RecursionError) as exc:
            raise BadFileError(p, "a zoattack model card (JSON)", describe(exc), how) from None
        if not isinstance(card, dict):
            raise BadFileError(p, "a zoattack model card", "not a JSON object", how)
        return _check_card(card, p, how)
    if Path(weights).suffix == ".safetensors" and Path(weights).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
            card = json.loads(meta["zoattack_card"]) if "zoattack_card" in meta else None
        except Exception as exc:  # the Rust parser's errors, JSON errors: untrusted bytes
            raise BadFileError(
                weights, "a readable .safetensors file", describe(exc), _REDO
            ) from None
        return _check_card(card, Path(weights), _REDO) if isinstance(card, dict) else None
    return None


# The fields zoattack reads from a card, and the JSON type each must have.
_CARD_TYPES: dict[str, tuple[type, str]] = {
    "model": (str, "a model name"),
    "dataset": (str, "a data set name"),
    "architecture": (dict, "an object"),
    "classes": (list, "a list of class names"),
    "input": (dict, "an object"),
}


def _check_card(card: dict[str, Any], path: Path, how: str) -> dict[str, Any]:
    """A card whose fields have the wrong JSON types is refused naming the card's file
    (untrusted input: a number where a name belongs must not surface as a TypeError later)."""
    for key, (kind, expected) in _CARD_TYPES.items():
        value = card.get(key)
        if value is not None and not isinstance(value, kind):
            shown_value = json.dumps(value)[:40]
            raise BadFileError(
                path, "a zoattack model card", f"its {key} is {shown_value}, not {expected}", how
            )
    config = card["architecture"].get("config") if "architecture" in card else None
    if config is not None and not isinstance(config, dict):
        raise BadFileError(
            path, "a zoattack model card", "its architecture.config is not an object", how
        )
    if any(not isinstance(c, str) for c in card.get("classes") or []):
        raise BadFileError(path, "a zoattack model card", "its classes are not all names", how)
    return card


def load_card(model: str, dataset: str) -> dict[str, Any]:
    """The card of shipped weights: ``load_card("resnet20", "fashion-mnist")["test_accuracy"]``."""
    path = weights_dir() / weights_filename(model, dataset)
    card = read_card(path)
    if card is None:
        raise MissingFileError(
            f"no shipped model card for {model} on {dataset}",
            shown(card_path(path)),
            _ship_hint(model, dataset),
        )
    return card


def _ship_hint(model: str, dataset: str) -> str:
    have = ", ".join(f"{m} on {d}" for m, d in shipped_weights()) or "none"
    return (
        f"shipped weights: {have}; train your own with `zoattack train --model {model} "
        f"--dataset {dataset} --out FILE.safetensors` and pass --weights FILE.safetensors"
    )


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
            inner = next(
                (obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None
            )
            if inner is None:
                break
            obj = inner
    if isinstance(obj, nn.Module):  # cannot happen with weights_only=True, kept for clarity
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(
            f"{path} holds no tensors; expected a state dict (or a dict with a 'state_dict' key)"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a PyTorch checkpoint (``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            "weights file", shown(path), "pass the path of a .safetensors or .pt/.pth checkpoint"
        )
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        if not head:
            raise BadFileError(path, "a .safetensors file", "it is empty", _REDO)
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...: untrusted bytes
            raise BadFileError(path, "a readable .safetensors file", describe(exc), _REDO) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors are many types; one clear line for the user
        raise ValueError(
            f"cannot read {path} as a PyTorch checkpoint with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return _unwrap(obj, path)


def load_into(
    module: nn.Module, state: Mapping[str, Tensor], source: str | Path, what: str
) -> nn.Module:
    """``load_state_dict(strict=True)`` with a one-line explanation when the shapes disagree."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        from zoattack.models.fit import describe_mismatch, state_shapes

        found = {k: tuple(v.shape) for k, v in state.items()}
        detail = describe_mismatch(state_shapes(module), found) or str(exc).splitlines()[0]
        raise ValueError(f"weights in {source} do not fit {what}: {detail}") from None
    return module


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(module: nn.Module, path: str | Path, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``module``'s state dict as safetensors and ``card`` as JSON next to it.

    The card (minus the file's own hash) is also stored in the safetensors metadata, so a file
    separated from its card still says what it is. Returns ``(weights_path, card_path)``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    card = {"format": CARD_FORMAT, **card, "weights_file": path.name}
    save_file(state, str(path), metadata={"zoattack_card": json.dumps(card, sort_keys=True)})
    card = {**card, "sha256": file_sha256(path)}
    cpath = card_path(path)
    cpath.write_text(json.dumps(card, indent=2) + "\n")
    shutil.copymode(cpath, path)  # safetensors writes 0600; match the card (the umask)
    return path, cpath
