"""Adversarial examples on disk: ``adversarial.safetensors``, written chunk by chunk.

One file format serves `zoattack run --out` (the run folder's ``adversarial.safetensors``),
:meth:`AttackResult.save <zoattack.attacks.base.AttackResult.save>` and
:func:`load_adversarial`. Tensors, one row per attacked image, in data-set index order:

* ``x_adv`` float32 ``(N, C, H, W)``: the attack's final point (the adversarial example where
  ``success``; for a hard-label attack the closest adversarial point found, else the clean
  image);
* ``index`` int64: the image's data-set index (its row in per_image.csv);
* ``label``, ``initial_prediction``, ``final_prediction`` int64: the true label, the model's
  label of the clean image and of the last point the attack scored (no extra query: the
  attack already knew it);
* ``queries`` int64, ``success`` bool; ``target`` int64 only for targeted attacks.

String metadata (safetensors' header) names the model, data set, norm, eps, method line and
counting rule, so a file is self-describing for `zoattack verify`.

Crash safety, like the rows: while a run works, each finished chunk (or the finished images
of a chunk cut short) is written as its own shard under ``adversarial.parts/``, atomically
(temporary file, fsync, rename), *before* its rows reach per_image.csv; so every recorded row
has its example, and a shard whose rows were lost is simply written again, identical, when the
chunk is redone. At the end the shards are merged into ``adversarial.safetensors`` (atomically)
and removed. Readers merge whatever is there, first occurrence of an index kept.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoattack.errors import ZOAttackError

FILE = "adversarial.safetensors"
PARTS = "adversarial.parts"
FORMAT = "zoattack.adversarial/1"
# Per-image tensors and their dtypes (``target`` optional).
FIELDS: dict[str, torch.dtype] = {
    "x_adv": torch.float32,
    "index": torch.int64,
    "label": torch.int64,
    "initial_prediction": torch.int64,
    "final_prediction": torch.int64,
    "queries": torch.int64,
    "success": torch.bool,
}
OPTIONAL = {"target": torch.int64}


@dataclass
class AdversarialExamples:
    """Adversarial examples read back from disk (N images, in data-set index order)."""

    x_adv: Tensor
    index: Tensor
    label: Tensor
    initial_prediction: Tensor
    final_prediction: Tensor
    queries: Tensor
    success: Tensor
    target: Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def attacked(self) -> Tensor:
        """Images the attack worked on: those the model got right at the start (and, when
        targeted, not already of the target class)."""
        ok = self.initial_prediction == self.label
        if self.target is not None:
            ok &= self.target != self.label
        return ok

    def tensors(self) -> dict[str, Tensor]:
        out = {k: getattr(self, k) for k in FIELDS}
        if self.target is not None:
            out["target"] = self.target
        return out


def example_tensors(
    result: Any, index: Tensor | list[int], keep: Tensor | None = None
) -> dict[str, Tensor]:
    """The per-image tensors of an attack result (score-based ``AttackResult`` or hard-label
    ``DecisionResult``), optionally only where ``keep``; ``index`` are the kept images'
    data-set indices (the ``index`` of their rows)."""
    mask = (
        torch.ones(len(result.label), dtype=torch.bool)
        if keep is None
        else keep.to("cpu", torch.bool)
    )

    def take(t: Tensor, dtype: torch.dtype) -> Tensor:
        return t.detach().to("cpu")[mask].to(dtype).contiguous()

    out = {
        "x_adv": take(result.x_adv, torch.float32),
        "index": torch.as_tensor(index, dtype=torch.int64).reshape(-1).contiguous(),
        "label": take(result.label, torch.int64),
        "initial_prediction": take(result.clean_pred, torch.int64),
        "final_prediction": take(result.final_pred, torch.int64),
        "queries": take(result.queries, torch.int64),
        "success": take(result.success, torch.bool),
    }
    if len(out["index"]) != len(out["label"]):
        raise AssertionError("internal error: one data-set index per kept image expected")
    target = getattr(result, "target", None)
    if isinstance(target, Tensor) and target.numel() == len(result.label):
        out["target"] = take(target, torch.int64)
    return out


def _meta(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    out = {"format": FORMAT}
    for k, v in (metadata or {}).items():
        if v is not None:
            out[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def write_examples(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=_meta(metadata))
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _read_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # a torn or foreign file: one line, never a traceback
        raise ZOAttackError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from None
    if meta.get("format") != FORMAT:
        raise ZOAttackError(
            f"{path} is not a zoattack adversarial-examples file (format "
            f"{meta.get('format')!r}, expected {FORMAT!r})"
        )
    missing = [k for k in FIELDS if k not in tensors]
    if missing:
        raise ZOAttackError(f"{path} lacks the tensor(s) {', '.join(missing)}")
    n = tensors["index"].shape[0]
    bad = [k for k in (*FIELDS, *OPTIONAL) if k in tensors and tensors[k].shape[:1] != (n,)]
    if bad or tensors["x_adv"].dim() != 4:
        raise ZOAttackError(f"{path}: tensors {', '.join(bad) or 'x_adv'} have the wrong shape")
    return tensors, meta


def _merge(parts: list[tuple[dict[str, Tensor], dict[str, str]]]) -> AdversarialExamples:
    """One set from several files: first occurrence of each index kept, index order."""
    keys = list(FIELDS) + [k for k in OPTIONAL if all(k in t for t, _ in parts)]
    cat = {k: torch.cat([t[k] for t, _ in parts]) for k in keys}
    index = cat["index"]
    # The first occurrence of each index (stable sort: earlier files first).
    order = torch.argsort(index, stable=True)
    sorted_idx = index[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    pick = order[first]
    meta: dict[str, str] = {}
    for _, m in parts:
        for k, v in m.items():
            meta.setdefault(k, v)
    picked = {k: v[pick] for k, v in cat.items()}
    return AdversarialExamples(
        **{k: picked[k] for k in FIELDS},
        target=picked.get("target"),
        metadata=meta,
    )


def part_files(folder: str | Path) -> list[Path]:
    """Shards of an unfinished run, in the order they were written."""
    d = Path(folder) / PARTS
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def load_adversarial(path: str | Path) -> AdversarialExamples:
    """Adversarial examples from a file (``AttackResult.save``, ``adversarial.safetensors``)
    or a run folder (`zoattack run --out`), finished or not (its shards are merged)."""
    p = Path(path).expanduser()
    files: list[Path]
    if p.is_dir():
        files = ([p / FILE] if (p / FILE).is_file() else []) + part_files(p)
        if not files:
            raise ZOAttackError(
                f"{p} holds no adversarial examples ({FILE}); runs write it with --out"
            )
    elif p.is_file():
        files = [p]
    else:
        raise ZOAttackError(f"{p}: no such file or folder")
    return _merge([_read_file(f) for f in files])


class ExampleLog:
    """The adversarial examples of a run folder, written as its chunks end."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self.parts = self.folder / PARTS

    def append(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
        """Durably add one shard (call before the same images' rows are appended)."""
        index = tensors["index"]
        if not len(index):
            return
        # Named by first index and count: a redone chunk rewrites the same name (identical
        # content), so shards never pile up across resumes.
        name = f"{int(index.min()):012d}-{len(index):06d}.safetensors"
        write_examples(self.parts / name, tensors, metadata)

    def finish(self) -> int:
        """Merge the shards (and any earlier merged file) into one file; returns its size in
        images (0: nothing was recorded, no file written)."""
        files = ([self.path] if self.path.is_file() else []) + part_files(self.folder)
        if not files:
            return 0
        merged = _merge([_read_file(f) for f in files])
        write_examples(self.path, merged.tensors(), merged.metadata)
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(merged)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)
