"""Checkpoints as safetensors only: nested state (optimizer, generator, history) is split into
tensors (stored as safetensors) and a JSON skeleton (stored in the file's metadata), so nothing
zoattack writes ever needs pickle to read back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoattack.data.files import BadFileError, MissingFileError, describe, shown

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"


def _pack(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        # Optimizer state is keyed by int parameter ids; JSON keys are strings.
        intkeys = bool(obj) and all(isinstance(k, int) for k in obj)
        packed = {
            str(k): _pack(v, f"{prefix}.{k}" if prefix else str(k), tensors) for k, v in obj.items()
        }
        return {_INTKEYS: packed} if intkeys else packed
    if isinstance(obj, (list, tuple)):
        items = [_pack(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unpack(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj and len(obj) == 1:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj and len(obj) == 1:
            return tuple(_unpack(v, tensors) for v in obj[_TUPLE])
        if _INTKEYS in obj and len(obj) == 1:
            return {int(k): _unpack(v, tensors) for k, v in obj[_INTKEYS].items()}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file + rename): an interrupted write never leaves a
    truncated checkpoint behind for ``--resume`` to choke on."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    skeleton = _pack(state, "", tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"zoattack_state": json.dumps(skeleton)})
    os.replace(tmp, path)
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFileError("checkpoint", shown(path), "train first (without --resume)")
    how = "delete it and train from scratch (without --resume)"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "zoattack_state" not in meta:
            raise ValueError("no state metadata")
        return _unpack(json.loads(meta["zoattack_state"]), load_file(str(path), device="cpu"))
    except Exception as exc:  # the Rust parser's, JSON's and the skeleton's errors alike
        raise BadFileError(path, "a zoattack defense checkpoint", describe(exc), how) from None


def state_dict_prefixed(**modules: torch.nn.Module | None) -> dict[str, Tensor]:
    """``{"denoiser.net.0.weight": ...}`` for the given modules (None ones skipped)."""
    out: dict[str, Tensor] = {}
    for name, mod in modules.items():
        if mod is not None:
            for k, v in mod.state_dict().items():
                out[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    return out


def split_prefixed(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    p = name + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
