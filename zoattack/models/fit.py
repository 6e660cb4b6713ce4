"""Will it fit? Shape and memory checks made before a command allocates or writes anything.

Two kinds of check, both done up front so a refused command leaves nothing behind:

* **shapes**: a zoo model's parameter shapes are compared with the weights file before the
  model is built (:func:`describe_mismatch`), and a built local model gets one forward pass
  on one input of the data's shape (:func:`probe_input`), so a data view whose channels do
  not fit the weights is one line instead of a RuntimeError deep in an attack;
* **memory**: the bytes a step will allocate are estimated from shapes alone (zoo models are
  built on torch's meta device for that, see :func:`zoattack.models.zoo.skeleton`) and
  refused past a limit (:func:`check_memory`) with the estimate and how to go ahead.

The limit is the machine's memory (its cgroup limit where one is set), or
``ZOATTACK_MAX_MEMORY`` (``8G``, ``512M``, ``1.5T``; ``off`` disables the check). One
environment variable serves every command (run, batch, train, defend, optimize, serve) and
library callers alike, and is never part of a run's recorded settings: it changes whether a
run starts, not what it computes.

Estimates are rough (they count the big tensors, not allocator overhead or every temporary);
they exist to turn a multi-gigabyte blow-up into a clear refusal, not to budget to the byte.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from zoattack.errors import ZOAttackError

MEMORY_ENV = "ZOATTACK_MAX_MEMORY"
FLOAT32 = 4
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
_OFF = ("off", "none", "0", "unlimited")


class MemoryLimitError(ZOAttackError, ValueError):
    """A step's estimated memory is past the limit; nothing was allocated or written."""

    def __init__(self, message: str, estimate: int, limit: int) -> None:
        super().__init__(message)
        self.estimate, self.limit = estimate, limit


def parse_size(text: str) -> int | None:
    """``"8G"`` -> 8 GiB in bytes (K/M/G/T are powers of 1024, an optional ``B``/``iB``
    suffix is accepted); ``"off"`` -> None (no limit). ValueError names the variable."""
    if text.strip().lower() in _OFF:
        return None
    m = _SIZE.match(text)
    if m is None or float(m.group(1)) <= 0 or not math.isfinite(float(m.group(1))):
        raise ValueError(f"{MEMORY_ENV}={text!r} is not a memory size; write e.g. 8G, 512M or off")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def machine_memory() -> int | None:
    """Physical memory, or the cgroup (container) limit when that is lower; None if unknown."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # cgroup v1 says "no limit" with a huge number
            sizes.append(int(text))
    return min(sizes) if sizes else None


def memory_limit() -> tuple[int | None, str]:
    """The limit in bytes (None: none) and where it comes from, for messages."""
    text = os.environ.get(MEMORY_ENV)
    if text is not None and text.strip():
        return parse_size(text), f"{MEMORY_ENV}={text.strip()}"
    return machine_memory(), "this machine's memory"


def format_bytes(n: float) -> str:
    """``6.4 GiB``, ``512 MiB``, ``3.1 TiB``: binary units, as the limit is written."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _suggest(estimate: int) -> str:
    gib = estimate / 2**30
    return f"{math.ceil(gib * 1.25)}G" if gib >= 1 else f"{math.ceil(estimate * 1.25 / 2**20)}M"


def check_memory(what: str, parts: Mapping[str, int], *, hint: str | None = None) -> int:
    """Refuse ``what`` when the sum of ``parts`` (bytes, by name) is past the limit.

    Returns the estimate. The message gives the estimate, its parts, the limit and both ways
    on: the ``hint`` (a smaller setting) and :data:`MEMORY_ENV` to allow it anyway.
    """
    total = int(sum(parts.values()))
    limit, source = memory_limit()
    if limit is None or total <= limit:
        return total
    shown = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items() if v > 0)
    raise MemoryLimitError(
        f"{what} needs about {format_bytes(total)} of memory ({shown}), more than the "
        f"{format_bytes(limit)} allowed ({source}); "
        + (f"{hint}, or " if hint else "")
        + f"set {MEMORY_ENV}={_suggest(total)} to go ahead anyway",
        total,
        limit,
    )


def tensor_bytes(*shape: int, itemsize: int = FLOAT32) -> int:
    """Bytes of a dense tensor of ``shape`` (Python ints: no overflow for absurd shapes)."""
    return math.prod(int(s) for s in shape) * itemsize


# -- shapes -----------------------------------------------------------------------------------


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of ``module``'s state dict (works on a meta-device skeleton: nothing allocated)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers (meta tensors included: their shapes say it)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from a ``.safetensors`` header, reading no tensor data; None when the file
    cannot be read that way (the loader then reports what is wrong with it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception:  # untrusted bytes: the real load gives the one-line error
        return None


def describe_mismatch(
    expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]
) -> str | None:
    """What keeps weights of shapes ``found`` from loading into a module of ``expected``
    (missing and unexpected keys, shape mismatches as ``key found vs expected``); None: fits."""
    # BatchNorm fills a missing num_batches_tracked itself when loading a state dict without
    # version metadata (legacy checkpoints such as the published CIFAR-10 ResNets lack it), so
    # its absence never keeps weights from loading.
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    extra = [k for k in found if k not in expected]
    wrong = [
        f"{k} {tuple(found[k])} vs {tuple(v)}"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} unexpected keys (e.g. {', '.join(extra[:3])})")
    if wrong:
        parts.append(f"shape mismatches: {', '.join(wrong[:3])}")
    return "; ".join(parts) or None


def activation_elements(skeleton: nn.Module, input_shape: Sequence[int]) -> int:
    """Numbers produced by ``skeleton``'s leaf modules for one input of ``input_shape``.

    Runs a forward pass on the meta device (shapes only, nothing computed or allocated), so
    it measures the real architecture at the real size. Functional ops in ``forward``
    (``F.relu``, pooling) are not modules and not counted: callers scale for them.
    """
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    leaves = [m for m in skeleton.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            skeleton(torch.empty(1, *input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


def training_bytes(
    skeleton: nn.Module, input_shape: Sequence[int], batch_size: int, optimizer: str
) -> dict[str, int]:
    """The memory one training step of ``skeleton`` needs, by part.

    Parameters are held 2 + m times (weights, gradients and the optimizer's m moments: Adam
    2, SGD with momentum 1); the backward pass keeps every activation of the batch, counted
    twice for the functional ops between modules and their gradients.
    """
    params = parameter_bytes(skeleton)
    moments = 2 if optimizer == "adam" else 1
    acts = activation_elements(skeleton, input_shape) * FLOAT32 * batch_size * 2
    return {
        "parameters, gradients and optimizer state": params * (2 + moments),
        "activations": acts,
    }


# -- the shape probe -------------------------------------------------------------------------


def probe_safe(model: nn.Module) -> bool:
    """Whether one forward pass is a construction check on our own module, with no effect.

    Not for a module that reaches someone else's model (a remote client counts what it
    scores: a probe would be a query of the victim, and queries are sacred) or whose forward
    changes its state (``stateful_forward``: e.g. a smoothed classifier's noise generator,
    which a probe would advance and so change every result after it).
    """
    return not any(
        hasattr(m, "scored_inputs") or getattr(m, "stateful_forward", False)
        for m in model.modules()
    )


def probe_input(
    model: nn.Module, input_shape: Sequence[int], *, what: str, inputs: str, hint: str
) -> bool:
    """One forward pass of ``model`` on one zero input of ``input_shape``: a model built by
    us that cannot take these inputs fails here, in one line, before any file is written.

    This is a model-construction check, not an attack query: it runs on the local module
    only (:func:`probe_safe`; False is returned and nothing is run otherwise), outside any
    query ledger, under ``no_grad`` and in eval mode (each submodule's mode is restored),
    and its output is thrown away. ValueError names ``what``, the ``inputs`` and the ``hint``.
    """
    if not probe_safe(model):
        return False
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    device = first.device if first is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, device=device))
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{what} cannot take {inputs}: {reason}; {hint}") from None
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{what} answers {inputs} with {got}, not one row of class scores per input; {hint}"
        )
    return True


# -- other estimates -------------------------------------------------------------------------

# Copies of the (problems x d) iterate that `zoattack optimize` holds at its peak, as
# base + per_direction * K: the estimate's K perturbed points and the function's temporaries
# over them. Measured on rosenbrock, d = 2e6, 3 problems (peak RSS over the iterate's size):
# lizo K=8: 122, K=16: 208; zo_sgd (gaussian) K=10: 81, K=40: 256.
OPTIMIZE_COPIES = (40, 11)


def optimize_bytes(dim: int, problems: int, directions: int) -> int:
    """Peak memory of `zoattack optimize` with ``directions`` K per step (see above)."""
    base, per = OPTIMIZE_COPIES
    return tensor_bytes(problems, dim) * (base + per * max(1, directions))


def view_bytes(images: int, shape: Sequence[int], source_channels: int) -> int:
    """Memory to resample ``images`` to ``shape`` (C, H, W): the result plus, when channels
    change, the resampled copy the new channels are made from."""
    c, h, w = shape
    copy = tensor_bytes(images, min(c, source_channels), h, w) if c != source_channels else 0
    return tensor_bytes(images, c, h, w) + copy


def check_takes_inputs(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dataset: str,
    model_name: str,
    weights: str | None = None,
    options: tuple[str, str] = ("--model", "--weights"),
) -> bool:
    """:func:`probe_input` with the words of the command line: which model, which weights,
    which data set, and what to pass instead. False when the model may not be probed."""
    model_opt, weights_opt = options
    shape = "x".join(str(int(s)) for s in input_shape)
    what = f"{model_opt} {model_name}" + (f" with {weights_opt} {weights}" if weights else "")
    takes = ""
    make_config = getattr(model, "config", None)
    config = make_config() if callable(make_config) else None
    if isinstance(config, dict) and isinstance(config.get("in_channels"), int):
        c, size = config["in_channels"], config.get("input_size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            view = f"{dataset.partition('@')[0]}@{c}x{size[0]}x{size[1]}"
            takes = f"it takes {c}x{size[0]}x{size[1]} images: pass --dataset {view}, "
        else:
            takes = f"it takes {c}-channel images: pass a --dataset view with {c} channel(s), "
    hint = takes + (
        f"{'or ' if takes else 'pass a --dataset (view) the model was built for, or '}"
        f"{weights_opt} trained on {dataset}"
    )
    return probe_input(
        model, input_shape, what=what, inputs=f"{dataset} images ({shape})", hint=hint
    )
