"""Dispatch counting for ``benchmarks/overhead.py --count`` (issue 26): host syncs and tensor ops
per model call of every attack on a small conv victim. Also loaded by tests/test_host_syncs.py
and tests/test_loop_cost.py (through overhead.py, which re-exports these names)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import AttackSpec
from zoattack.seeding import make_generator

REFERENCE = "torchattacks Square"


def have_torchattacks() -> bool:
    try:
        import torchattacks  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------- counting (--count, issue 26)
# Ops after which the host must wait for the device on a GPU: a scalar read (`.item()`,
# `bool()`, `int()`, `float()`), an op whose output size depends on the data (nonzero,
# boolean masks, unique, bincount, repeat_interleave without output_size), a bool result
# (`torch.equal`) and any copy between devices. Counted at dispatch, so a CPU run shows
# them just as a GPU run would make them.
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "masked_scatter",
        "unique_consecutive",
        "_unique",
        "_unique2",
        "unique_dim",
        "bincount",
        "equal",
        "is_nonzero",
        "allclose",
    }
)
MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


def _op_name(func: Any) -> str:
    return str(func).split(".")[1] if "." in str(func) else str(func)


def _is_sync(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    name = _op_name(func)
    if name in SYNC_OPS:
        return True
    if name == "repeat_interleave":
        return "output_size" not in kwargs or kwargs["output_size"] is None
    if name in MASK_INDEX_OPS and len(args) > 1:
        return any(
            isinstance(t, Tensor) and t.dtype == torch.bool
            for t in (args[1] or ())
            if t is not None
        )
    if name in ("_to_copy", "copy_"):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        devices = {t.device for t in tensors}
        if "device" in kwargs and kwargs["device"] is not None:
            devices.add(torch.device(kwargs["device"]))
        return len(devices) > 1
    return False


class DispatchCount(TorchDispatchMode):
    """Counts, at dispatch, the tensor ops and host synchronisations (:func:`_is_sync`) made
    outside the model, and the model calls (:meth:`model` wraps the victim). ``where``
    (with ``trace=True``): sync counts per op and source line, to find the offenders."""

    def __init__(self, trace: bool = False) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.calls = 0
        self.trace = trace
        self.where: dict[str, int] = {}
        self.op_names: dict[str, int] = {}  # with trace: ops per name
        self._inside = 0

    def model(self, net: Callable[[Tensor], Tensor]) -> nn.Module:
        """``net`` as a module whose own ops are not counted; each call is one model call."""
        count = self

        class Counted(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: Tensor) -> Tensor:
                count.calls += 1
                count._inside += 1
                try:
                    return self.net(x)
                finally:
                    count._inside -= 1

        return Counted().eval()

    def _sync(self, name: str) -> None:
        self.syncs += 1
        if self.trace:
            import traceback

            frames = [
                f"{f.filename.split('zoattack/')[-1]}:{f.lineno}"
                for f in traceback.extract_stack()[:-2]
                if "zoattack/" in f.filename
                and "overhead.py" not in f.filename
                and "_overhead_count.py" not in f.filename
            ]
            key = f"{name} @ {' < '.join(reversed(frames[-3:]))}"
            self.where[key] = self.where.get(key, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if not self._inside:
            self.ops += 1
            if self.trace:
                name = _op_name(func)
                self.op_names[name] = self.op_names.get(name, 0) + 1
            if _is_sync(func, args, kwargs):
                self._sync(_op_name(func))
        return func(*args, **kwargs)

    # Host reads that dispatch nothing on a CPU tensor but wait for a GPU one: ``tolist``,
    # ``numpy`` and ``cpu`` (the explicit move to the host; ``.to(device)`` is not counted,
    # since on a CPU run it cannot tell a move to the host from one to the images' device).
    _HOST_READS = ("tolist", "numpy", "cpu")

    def __enter__(self):  # type: ignore[no-untyped-def]
        self._saved = {name: getattr(Tensor, name) for name in self._HOST_READS}
        for name, fn in self._saved.items():

            def wrapped(t: Tensor, *a: Any, _fn: Any = fn, _name: str = name, **k: Any) -> Any:
                if not self._inside:
                    self._sync(_name)
                return _fn(t, *a, **k)

            setattr(Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for name, fn in self._saved.items():
            setattr(Tensor, name, fn)
        super().__exit__(*exc)


class _Centre(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return (x - 0.5) * 4


def small_conv(seed: int = 0) -> nn.Module:
    """The issue's small convolutional victim for 3x32x32 inputs (random weights, no biases,
    centred input: its labels vary with the image, so decision attacks find starts)."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        _Centre(),
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(256, 10),
    )
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(p[0].numel())))
    return net.eval()


# Radii small enough that most images run their whole budget (the steady state the counts
# are about), rather than being fooled in a few steps.
COUNT_EPS = {"linf": 0.01, "l2": 0.5}
SCORE_COUNTED = ("square", "sign", "zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")
DECISION_COUNTED = ("hsja", "sign_opt", "rays", "opt")


@dataclass
class CountRow:
    method: str
    norm: str
    calls: int
    syncs: int
    ops: int
    where: dict[str, int] = field(default_factory=dict)

    @property
    def syncs_per_call(self) -> float:
        return self.syncs / max(self.calls, 1)

    @property
    def ops_per_call(self) -> float:
        return self.ops / max(self.calls, 1)


def count_attack(
    method: str,
    norm: str,
    *,
    images: int = 16,
    budget: int = 200,
    shape: tuple[int, int, int] = (3, 32, 32),
    trace: bool = False,
) -> CountRow:
    """One attack run (``zoattack run``'s defaults for ``method`` at ``norm``) under
    :class:`DispatchCount`: the whole run, the clean check included, over its model calls."""
    from zoattack.attacks.hardlabel import run_decision_attack

    x = torch.rand(images, *shape, generator=torch.Generator().manual_seed(1))
    net = small_conv()
    with torch.no_grad():
        y = net(x).argmax(1)
    count = DispatchCount(trace)
    victim = count.model(net)
    gen = make_generator(0)
    if method == REFERENCE:
        import torchattacks

        eps = COUNT_EPS[norm]
        atk = torchattacks.Square(
            victim,
            norm={"linf": "Linf", "l2": "L2"}[norm],
            eps=eps,
            n_queries=budget - 2,
            n_restarts=1,
            p_init=0.8,
            loss="margin",
            resc_schedule=True,
            seed=0,
            verbose=False,
        )
        rng = torch.random.get_rng_state()
        try:
            torch.random.manual_seed(0)
            with count:
                atk.init_hyperparam(x)
                with torch.no_grad():
                    victim(x)
                atk.attack_single_run(x, y)
        finally:
            torch.random.set_rng_state(rng)
    elif method in DECISION_COUNTED:
        bb = BlackBox(victim, output="labels", budget=budget)
        with count:
            run_decision_attack(
                method,
                bb,
                x,
                y,
                generator=gen,
                norm=norm,
                eps=COUNT_EPS[norm],
                budget=budget,
            )
    else:
        spec = AttackSpec(norm=norm, eps=COUNT_EPS[norm], budget=budget, optimizer=method)
        spec = spec.resolved()
        assert spec.eps is not None and spec.subspace is not None
        bb = BlackBox(victim, output="logits", budget=budget)
        with count:
            run_attack(
                bb,
                x,
                y,
                spec.make_rule(),
                generator=gen,
                norm=spec.norm,
                eps=spec.eps,
                budget=budget,
                loss=spec.loss,
                subspace=spec.subspace,
            )
    return CountRow(method, norm, count.calls, count.syncs, count.ops, count.where)


def count_table(args: argparse.Namespace) -> list[CountRow]:
    methods: list[str] = []
    if have_torchattacks():
        methods.append(REFERENCE)
    methods += list(SCORE_COUNTED) + list(DECISION_COUNTED)
    rows = []
    for method in methods:
        for norm in ("linf", "l2"):
            try:
                row = count_attack(
                    method, norm, images=args.images, budget=args.budget, trace=args.trace
                )
            except ValueError as exc:  # a rule or attack made for the other norm only
                print(f"  {method:<22} {norm:<4} skipped: {exc}", flush=True)
                continue
            rows.append(row)
            print(
                f"  {method:<22} {norm:<4} {row.calls:4d} model calls  "
                f"{row.syncs_per_call:6.2f} syncs/call  {row.ops_per_call:7.1f} ops/call",
                flush=True,
            )
            for key, n in sorted(row.where.items(), key=lambda kv: -kv[1])[:12]:
                print(f"      {n / max(row.calls, 1):6.2f}  {key}")
    return rows


def count_markdown(rows: list[CountRow]) -> str:
    lines = [
        "| attack | norm | model calls | host syncs / call | tensor ops / call |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.norm} | {r.calls} | {r.syncs_per_call:.2f} | {r.ops_per_call:.1f} |"
        )
    return "\n".join(lines)
