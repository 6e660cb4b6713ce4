#!/usr/bin/env python
"""The attack loop's own cost per scored input, from 28x28 to 224x224 (issue 16).

Part 1, zero-cost victim: adaptive average pooling + a linear layer, so the forward is nearly
free and the wall time is the tool's own work. Its bias puts class 0 far ahead of the rest, so
no image is ever fooled and every attack spends its whole budget at full batch (the steady
state, not a mix of batch sizes). ``--images`` random images (20), budget ``--budget`` (200)
per image, Linf eps 0.05, margin loss, through the library exactly as ``zoattack run`` does:
``AttackSpec(optimizer=..., estimator=...).resolved().make_rule()`` + ``run_attack``.
torchattacks' Square (``n_queries = budget - 2``, p_init 0.8, margin, one restart) runs in
the same process on the same model and tensors. Reported: microseconds of wall time per
scored input (a counting wrapper around the model counts the rows), the ratio to
torchattacks' Square at that size, and per method the exponent ``b`` of a least-squares fit
``cost ~ d^b`` over the sizes (and between the two largest sizes, where fixed per-step Python
cost no longer hides the per-coordinate work).

Rows: torchattacks Square; zoattack ``square`` and ``sign``; every gradient rule with its
default (tuned) estimator; and ``zo_sgd`` with each estimator (``--estimators``).

Part 2, real victims (``--victims``): the bundled ``small_cnn`` (Fashion-MNIST weights) at
1x28x28, ``resnet20`` with random weights on a 3x32x32 input, torchvision ``resnet18`` with
random weights at 3x96x96 and 3x224x224 (predictions do not matter for cost). Each attack
runs on a batch of images (labels = the clean predictions; 500 at 28x28, ``zoattack run``'s
default ``--chunk-size``, 100 / 16 / 8 at the larger sizes, ``--victim-images`` to override)
with a model wrapper that records the batch sizes it was handed and the time spent inside
the model; afterwards the same sequence of batches is replayed through the bare model.
Reported: scored inputs per second during the attack, the ratio to the raw batched forward
at those batch sizes (1.0 = the tool adds nothing) and the share of the attack's time spent
inside the model (the same quantity without the replay's run-to-run noise).

Timing: one torch thread (``--threads``), the minimum of ``--repeats`` runs (each run is
deterministic, so repeats differ only by machine noise); on CUDA every timed region ends with
a synchronize. ``--clock cpu`` times with this process's CPU time instead of wall time (CPU
only): on a shared, oversubscribed machine the wall time mostly measures waiting for a core.
``--device cuda`` (or ``cpu cuda``) adds rows for the GPU; a missing GPU is a one-line error,
exit code 2.

Run: ``python benchmarks/overhead.py`` (< 10 min on one CPU thread), ``--quick`` (< 2 min),
``--device cuda --quick`` on a GPU machine (< 4 min, unattended-safe). ``--json FILE`` writes
every measurement. Needs ``torchattacks==3.5.1`` (``make peers``); without it
the Square column is "skipped" and the ratios are blank.

The code is in three files: this one (victims, timed runs, options), ``_overhead_count.py``
(``--count``: dispatch counting) and ``_overhead_report.py`` (rows, exponents, tables).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable

import torch
from _overhead_count import (  # noqa: F401  (re-exported: tests use overhead.DispatchCount etc.)
    COUNT_EPS,
    DECISION_COUNTED,
    MASK_INDEX_OPS,
    REFERENCE,
    SCORE_COUNTED,
    SYNC_OPS,
    CountRow,
    DispatchCount,
    count_attack,
    count_markdown,
    count_table,
    have_torchattacks,
    small_conv,
)
from _overhead_report import SIZES, Row, exponents, fit_exponent, markdown  # noqa: F401
from torch import Tensor, nn

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import DEFAULT_CHUNK, AttackSpec
from zoattack.seeding import make_generator

RULES = ("square", "sign", "zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")
SEARCH = ("square", "sign")
ESTIMATORS = ("gaussian", "sphere", "rademacher", "coordinate", "dap", "lizo", "block_sign")
EPS = 0.05


class Counter(nn.Module):
    """Counts the rows a model scores and records each call's batch size and model time."""

    def __init__(self, net: nn.Module, sync: Callable[[], None]) -> None:
        super().__init__()
        self.net = net
        self.sync = sync
        self.rows = 0
        self.batches: list[int] = []
        self.model_s = 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.sync()
        t0 = now()
        out = self.net(x)
        self.sync()
        self.model_s += now() - t0
        self.rows += x.shape[0]
        self.batches.append(x.shape[0])
        return out


def zero_cost_victim(shape: tuple[int, int, int], device: torch.device) -> nn.Module:
    """Pool to 2x2 + linear; class 0 leads by 1000 so nothing within eps ever fools it."""
    c = shape[0]
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(4 * c, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 4 * c, generator=gen))
        lin.bias.zero_()
        lin.bias[0] = 1000.0
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), lin).to(device).eval()


def real_victim(size: str, device: torch.device) -> tuple[str, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    if size == "28":
        from zoattack.models import create_model

        net = create_model("small_cnn", dataset="fashion-mnist", pretrained=True)
        return "small_cnn (bundled)", net.to(device).eval()
    if size == "32":
        from zoattack.models import create_model

        net = create_model("resnet20", in_channels=3, num_classes=10, generator=gen)
        return "resnet20 (random)", net.to(device).eval()
    import torchvision

    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # torchvision initialises from the global RNG; restored below
    net = torchvision.models.resnet18(weights=None)
    torch.random.set_rng_state(torch_state)
    return "torchvision resnet18 (random)", net.to(device).eval()


def images(n: int, shape: tuple[int, int, int], device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, *shape, generator=gen).to(device)


def spec_for(method: str, estimator: str | None, budget: int) -> AttackSpec:
    # coordinate defaults to every coordinate per step (d + 1 queries, over any budget
    # here); 10 random coordinates make it a step-sized estimator like the others.
    samples = 10 if estimator == "coordinate" else None
    return AttackSpec(
        norm="linf",
        eps=EPS,
        budget=budget,
        optimizer=method,
        estimator=estimator,
        samples=samples,
    ).resolved()


def run_zo(
    net: Counter, x: Tensor, y: Tensor, spec: AttackSpec, device: torch.device
) -> tuple[float, int]:
    """One ``run_attack`` as ``zoattack run`` makes it -> (wall seconds, rows scored)."""
    assert spec.eps is not None and spec.subspace is not None
    rows0 = net.rows
    bb = BlackBox(net, output="logits", budget=spec.budget, max_batch=spec.max_batch)
    gen = make_generator(0, device)
    sync(device)
    t0 = now()
    run_attack(
        bb,
        x,
        y,
        spec.make_rule(),
        generator=gen,
        norm=spec.norm,
        eps=spec.eps,
        budget=spec.budget,
        loss=spec.loss,
        subspace=spec.subspace,
    )
    sync(device)
    return now() - t0, net.rows - rows0


def run_square(
    net: Counter, x: Tensor, y: Tensor, budget: int, device: torch.device
) -> tuple[float, int]:
    """torchattacks' Square as ``benchmarks/attack.py`` runs it -> (wall seconds, rows)."""
    import torchattacks

    rows0 = net.rows
    atk = torchattacks.Square(
        net,
        norm="Linf",
        eps=EPS,
        n_queries=budget - 2,
        n_restarts=1,
        p_init=0.8,
        loss="margin",
        resc_schedule=True,
        seed=0,
        verbose=False,
    )
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    sync(device)
    t0 = now()
    atk.init_hyperparam(x)
    with torch.no_grad():
        net(x)  # the clean check Square.perturb makes
    torch.random.manual_seed(0)  # torchattacks draws from the global RNG; restored below
    atk.attack_single_run(x, y)
    sync(device)
    wall = now() - t0
    torch.random.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    return wall, net.rows - rows0


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def now() -> float:
    """The timing clock: wall time (default) or this process's CPU time (``--clock cpu``,
    steadier on a shared machine, where waiting for a core is not the tool's cost)."""
    return _clock()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeats: int, fn: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    runs = [fn() for _ in range(repeats)]
    return min(r[0] for r in runs), runs[0][1]


def zero_cost_table(args: argparse.Namespace, device: torch.device) -> list[Row]:
    out: list[Row] = []
    methods: list[tuple[str, str, str | None]] = [(REFERENCE, "", None)]
    methods += [(m, m, None) for m in args.rules]
    methods += [(f"zo_sgd+{e}", "zo_sgd", e) for e in args.estimators]
    ta = have_torchattacks()
    for size in args.sizes:
        shape = SIZES[size]
        d = math.prod(shape)
        net = Counter(zero_cost_victim(shape, device), lambda: sync(device))
        x = images(args.images, shape, device)
        with torch.no_grad():
            y = net.net(x).argmax(1)
        ref: float | None = None
        for label, rule, est in methods:
            if label == REFERENCE:
                if not ta:
                    out.append(Row(device.type, size, d, label, None, 0, note="skipped"))
                    continue
                wall, rows = best_of(
                    args.repeats,
                    lambda net=net, x=x, y=y: run_square(net, x, y, args.budget, device),
                )
            else:
                spec = spec_for(rule, est, args.budget)
                wall, rows = best_of(
                    args.repeats,
                    lambda net=net, x=x, y=y, spec=spec: run_zo(net, x, y, spec, device),
                )
            us = wall / max(rows, 1) * 1e6
            if label == REFERENCE:
                ref = us
            row = Row(device.type, size, d, label, us, rows)
            row.ratio = us / ref if ref else None
            out.append(row)
            print(
                f"  [{device.type} {size}] {label:<22} {us:9.1f} us/input "
                f"({rows} inputs, {wall:.2f} s)",
                flush=True,
            )
    return out


def real_victim_table(args: argparse.Namespace, device: torch.device) -> list[Row]:
    out: list[Row] = []
    for size in args.sizes:
        shape = SIZES[size]
        d = math.prod(shape)
        name, bare = real_victim(size, device)
        n, budget = args.victim_images[size], args.victim_budget[size]
        x = images(n, shape, device)
        with torch.no_grad():
            y = bare(x).argmax(1)
        for method in args.victim_rules:
            net = Counter(bare, lambda: sync(device))
            spec = spec_for(method, None, budget)
            with torch.no_grad():
                bare(x)  # warm-up at the first batch size (oneDNN builds kernels per shape)
            wall, rows = run_zo(net, x, y, spec, device)
            # The same batches through the bare model, right after (same machine state).
            bare_s = 0.0
            with torch.no_grad():
                for b in net.batches:
                    xb = x[torch.arange(b, device=device) % n]
                    sync(device)
                    t0 = now()
                    bare(xb)
                    sync(device)
                    bare_s += now() - t0
            rate = rows / wall
            raw = rows / bare_s
            row = Row(device.type, size, d, method, wall / rows * 1e6, rows, rate / raw)
            row.extra = {
                "victim": name,
                "images": n,
                "budget": budget,
                "inputs_per_s": rate,
                "raw_inputs_per_s": raw,
                "model_share": net.model_s / wall,
            }
            out.append(row)
            print(
                f"  [{device.type} {size}] {name} {method:<10} {rate:8.1f} inputs/s, raw "
                f"{raw:8.1f}/s, ratio {rate / raw:.3f}",
                flush=True,
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", nargs="+", default=["cpu"], choices=["cpu", "cuda"])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--budget", type=int, default=200)
    p.add_argument("--rules", nargs="*", default=list(RULES), choices=RULES)
    p.add_argument("--estimators", nargs="*", default=list(ESTIMATORS), choices=ESTIMATORS)
    p.add_argument("--victim-rules", nargs="*", default=["sign", "square", "zo_signsgd"])
    p.add_argument("--no-victims", action="store_true", help="skip part 2 (real victims)")
    p.add_argument("--victims-only", action="store_true", help="skip part 1 (zero-cost)")
    p.add_argument(
        "--victim-images",
        dest="victim_images_all",
        type=int,
        default=None,
        help="images per real-victim attack at every size (default: 500 at 28x28, "
        "`zoattack run`'s chunk size; 100 / 16 / 8 at 32 / 96 / 224)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=list(CLOCK), default="wall")
    p.add_argument("--quick", action="store_true", help="fewer repeats and estimator rows")
    p.add_argument("--json", default=None, help="write every measurement to this file")
    p.add_argument(
        "--count",
        action="store_true",
        help="instead of timing: host syncs and tensor ops per model call of every attack "
        "(16 images 3x32x32, budget 200 unless --images/--budget say otherwise; CPU)",
    )
    p.add_argument("--trace", action="store_true", help="with --count: where the syncs are")
    args = p.parse_args(argv)
    if args.count:
        if "--images" not in (argv if argv is not None else sys.argv):
            args.images = 16
        return args
    if args.victim_images_all is not None and args.victim_images_all < 1:
        p.error("--victim-images must be >= 1")
    if args.images < 1 or args.budget < 12 or args.repeats < 1:
        p.error("--images must be >= 1, --budget >= 12 and --repeats >= 1")
    if args.quick:
        # Per-input cost is a steady state: fewer images and queries measure the same thing.
        args.repeats = 1
        args.images = min(args.images, 10)
        args.budget = min(args.budget, 100)
        args.estimators = [e for e in args.estimators if e in ("gaussian", "block_sign")]
    if "cuda" in args.device and args.clock == "cpu":
        p.error("--clock cpu cannot time GPU work; use the wall clock with --device cuda")
    # Real victims: as many images per batch as `zoattack run` attacks together (its default
    # --chunk-size, 500) where the model is cheap (28x28), fewer where one forward already
    # dwarfs a step's own cost; budgets short enough that a CPU resnet18 at 224x224 (~20 ms
    # per input on one thread) stays within seconds. --victim-images N overrides the counts
    # (the 20-image batches of the earlier table: --victim-images 20).
    images = {"28": DEFAULT_CHUNK, "32": 100, "96": 16, "224": 8}
    if args.quick:
        images = {k: max(v // 2, 4) for k, v in images.items()}
    if args.victim_images_all is not None:
        images = dict.fromkeys(images, args.victim_images_all)
    args.victim_images = images
    args.victim_budget = {"28": 50, "32": 50, "96": 20, "224": 12}
    return args


def main(argv: list[str] | None = None) -> int:
    global _clock
    args = parse_args(argv)
    _clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    if args.count:
        print(
            f"torch {torch.__version__}; counted at dispatch on CPU; {args.images} images "
            f"3x32x32 x budget {args.budget}, small conv victim",
            flush=True,
        )
        rows = count_table(args)
        print()
        print(count_markdown(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump([dict(r.__dict__) for r in rows], f, indent=1)
        return 0
    devices = []
    for name in args.device:
        if name == "cuda" and not torch.cuda.is_available():
            print("error: --device cuda given but torch sees no CUDA device", file=sys.stderr)
            return 2
        devices.append(torch.device(name))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s); {args.images} images x budget {args.budget}, Linf eps {EPS}; "
        f"{args.clock} clock",
        flush=True,
    )
    if not have_torchattacks():
        print("torchattacks not installed: the Square column is skipped", flush=True)
    t0 = time.perf_counter()
    zero: list[Row] = []
    real: list[Row] = []
    for dev in devices:
        if not args.victims_only:
            zero += zero_cost_table(args, dev)
        if not args.no_victims:
            real += real_victim_table(args, dev)
    print()
    print(markdown(zero, real))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": dict(vars(args)),
                    "zero_cost": [r.__dict__ for r in zero],
                    "real": [r.__dict__ for r in real],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
