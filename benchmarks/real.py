#!/usr/bin/env python
"""Real-victim benchmark: the published CIFAR-10 ResNet-20 (He et al. 2016; Idelbayev's
checkpoint, pinned by SHA-256), every zoattack score-based attack beside torchattacks' Square,
on the same real CIFAR-10 test tensors, in one run.

What it measures (every number comes from this one run; nothing is hard-coded):

* Victim: zoo ``resnet20`` on ``cifar10`` with its published weights, loaded exactly as
  ``zoattack run --model resnet20 --dataset cifar10`` loads them (torch hub cache, checked
  against the pin). Nothing is downloaded: pass ``--torch-home DIR`` (a torch hub cache holding
  ``hub/checkpoints/resnet20-12fca82f.th``) and ``--data-dir DIR`` (torchvision's
  ``cifar-10-batches-py``); the clean accuracy on all loaded test images is printed.
* Images: the first ``--images`` test images the victim classifies correctly (the same tensors
  go to every attack).
* Threat models: CIFAR-10's conventions from the data-set registry (Linf 8/255, L2 0.5),
  untargeted, margin loss. Budgets: ``--budgets`` queries per image.
* zoattack: ``square``, ``sign`` (Linf only) and the five gradient rules (zo_sgd, zo_signsgd,
  zo_adamm, radazo, lizo), each with its own paper's estimator and every other setting as
  ``zoattack run`` resolves it (:meth:`zoattack.jobs.attack.AttackSpec.resolved`; the method
  line is recorded), through :func:`zoattack.attacks.run_attack` on the
  :class:`zoattack.blackbox.BlackBox` ledger (benchmarks/attack.py's counting).
* Peer: torchattacks' Square (p_init 0.8, margin loss, one restart), counted with its own
  per-image counter + 1 clean check, ``n_queries = budget - 2`` (benchmarks/attack.py). When
  torchattacks is not installed its column is skipped with a note
  (``pip install torchattacks==3.5.1``, or ``pip install --target DIR --no-deps
  torchattacks==3.5.1`` and ``PYTHONPATH=DIR``).

Success = the returned point is misclassified (re-checked with an uncounted forward), inside the
eps-ball and [0, 1], within the budget. Median queries are over successes. Ratios: success and
median queries of each attack divided by torchattacks' Square's on the same images.

Run (the issue's full size; hours on 2 CPU cores, minutes on a GPU):
``python benchmarks/real.py --torch-home ../shared/data/torch --data-dir
../shared/data/cifar10-test-0-499 --images 100 --budgets 1000 10000 --out bench_real``.
Small: ``... --images 20 --budgets 1000``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    Meter,
    command_line,
    fmt,
    load_average,
    log,
    markdown_table,
    metadata,
    out_dir,
    set_threads,
    versions,
    write_csv,
    write_json,
)
from attack import Outcome, predict, run_torchattacks_square, verify
from torch import Tensor, nn

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.data.registry import conventional_eps, eps_text
from zoattack.jobs.attack import AttackSpec, method_of
from zoattack.optim import OPTIMIZERS
from zoattack.seeding import make_generator

GRADIENT_RULES = ("zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")
METHODS = ("square", "sign", *GRADIENT_RULES)
PEER = "torchattacks_square"
PEER_HINT = (
    "torchattacks is not installed: its Square column is skipped (pip install "
    "torchattacks==3.5.1, or pip install --target DIR --no-deps torchattacks==3.5.1 and "
    "PYTHONPATH=DIR)"
)


def spec_for(method: str, norm: str, budget: int, seed: int, max_batch: int) -> AttackSpec:
    """What ``zoattack run --model resnet20 --dataset cifar10 --optimizer METHOD`` runs, with
    a gradient rule's own paper's estimator."""
    estimator = None
    if method in GRADIENT_RULES:
        estimator = getattr(OPTIMIZERS.get(method).factory, "default_estimator", None)
    return AttackSpec(
        model="resnet20",
        dataset="cifar10",
        norm=norm,
        budget=budget,
        optimizer=method,
        estimator=estimator,
        seed=seed,
        max_batch=max_batch,
        device="cpu",
    ).resolved()


def run_zoattack(spec: AttackSpec, net: nn.Module, x: Tensor, y: Tensor) -> Outcome:
    """One resolved spec on the given tensors, counted by the BlackBox ledger."""
    assert spec.eps is not None and spec.subspace is not None
    meter = Meter(net)
    bb = BlackBox(
        meter,
        output="logits",
        budget=spec.budget,
        max_batch=spec.max_batch,
        input_shape=tuple(x.shape[1:]),
    )
    t0 = time.perf_counter()
    res = run_attack(
        bb,
        x,
        y,
        spec.make_rule(),
        generator=make_generator(spec.seed, x.device),
        norm=spec.norm,
        eps=spec.eps,
        budget=spec.budget,
        loss=spec.loss,
        subspace=spec.subspace,
    )
    wall = time.perf_counter() - t0
    ok, left = verify(net, res.x_adv, x, y, spec.norm, spec.eps, res.queries, spec.budget)
    notes = []
    if not torch.equal(ok, res.success):
        notes.append(f"verification disagrees with run_attack on {int((ok != res.success).sum())}")
    if left:
        notes.append(f"{left} returned points outside the ball")
    if bb.total_queries != meter.rows:
        notes.append(f"ledger {bb.total_queries} != rows scored {meter.rows}")
    return Outcome(ok & res.success, res.queries, wall, meter, notes, {"method": method_of(spec)})


def row(norm: str, eps: float, budget: int, method: str, o: Outcome, config: str) -> dict[str, Any]:
    n, s = len(o.success), int(o.success.sum())
    q = o.queries[o.success].double()
    return {
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "method": method,
        "config": config,
        "images": n,
        "successes": s,
        "success_pct": 100.0 * s / n if n else None,
        "median_queries": float(q.median()) if s else None,
        "mean_queries": float(q.mean()) if s else None,
        "wall_s": o.wall,
        "notes": "; ".join(o.notes),
    }


def table(rows: list[dict]) -> list[str]:
    header = [
        "norm",
        "budget",
        "images",
        "method",
        "success %",
        "median queries",
        "success / TA Square",
        "median queries / TA Square",
        "wall s",
    ]
    ref = {(r["norm"], r["budget"]): r for r in rows if r["method"] == PEER}
    body = []
    for r in rows:
        ta = ref.get((r["norm"], r["budget"]))

        def ratio(key: str, r: dict = r, ta: dict | None = ta) -> str:
            if ta is None or r is ta or not r[key] or not ta[key]:
                return "-"
            return f"{r[key] / ta[key]:.2f}"

        body.append(
            [
                f"{r['norm']} {eps_text(r['eps'])}",
                f"{r['budget']:,}",
                str(r["images"]),
                r["method"],
                fmt(r["success_pct"], ".1f"),
                fmt(r["median_queries"], ".0f"),
                ratio("success_pct"),
                ratio("median_queries"),
                fmt(r["wall_s"], ".0f"),
            ]
        )
    return markdown_table(header, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="CIFAR-10 in torchvision's layout (e.g. ../shared/data/cifar10-test-0-499); required",
    )
    p.add_argument(
        "--torch-home",
        type=Path,
        default=None,
        help="a torch hub cache with hub/checkpoints/resnet20-12fca82f.th (e.g. "
        "../shared/data/torch); default: $TORCH_HOME",
    )
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="read at most this many test images")
    p.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--no-peer", action="store_true", help="skip torchattacks' Square")
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write results.json/.csv/table.md here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_dir is None:
        log(
            "error: pass --data-dir DIR (CIFAR-10 in torchvision's layout, e.g. "
            "../shared/data/cifar10-test-0-499) and --torch-home DIR (a torch hub cache with "
            "the published resnet20-12fca82f.th, e.g. ../shared/data/torch)",
            stderr=True,
        )
        return 2
    if args.torch_home is not None:
        os.environ["TORCH_HOME"] = str(args.torch_home.expanduser().absolute())
    from zoattack.data import load_dataset
    from zoattack.errors import ZOAttackError
    from zoattack.models import create_model

    set_threads(args.threads or None)
    vers = versions("torchattacks")
    log("command: " + command_line())
    log("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in vers.items()))
    load = load_average()
    log(
        f"torch threads {torch.get_num_threads()}, load average "
        f"{', '.join(f'{v:.1f}' for v in load) if load else '?'}"
    )
    try:
        data = load_dataset("cifar10", split="test", data_dir=str(args.data_dir), limit=args.limit)
        net = create_model("resnet20", dataset=data, pretrained=True, device="cpu").eval()
    except (ZOAttackError, ValueError, OSError) as exc:
        log(f"error: {exc}", stderr=True)
        return 2
    pred = predict(net, data.images)
    correct = (pred == data.labels).nonzero().flatten()
    log(
        f"victim resnet20 (published CIFAR-10 weights): {len(correct)} of {len(data)} test "
        f"images correct ({100 * len(correct) / len(data):.1f}%), from {data.source}"
    )
    pick = correct[: args.images]
    x, y = data.images[pick], data.labels[pick]
    log(f"attacking the first {len(y)} correctly classified (test indices {pick.tolist()[:5]}...)")
    have_peer = not args.no_peer and vers.get("torchattacks") is not None
    if not args.no_peer and not have_peer:
        log(PEER_HINT)
    rows: list[dict] = []
    meta = metadata(
        args={k: str(v) for k, v in vars(args).items()},
        clean_correct=len(correct),
        clean_total=len(data),
        indices=pick.tolist(),
    )

    def save() -> None:
        if args.out is None or not rows:
            return
        d = out_dir(args.out)
        write_json(d / "results.json", {"metadata": meta, "rows": rows})
        write_csv(d / "results.csv", rows, list(rows[0]))
        (d / "table.md").write_text("\n".join(table(rows)) + "\n")

    for norm in args.norms:
        eps, source = conventional_eps("cifar10", norm)
        for budget in args.budgets:
            log(f"-- {norm} eps={eps_text(eps)} ({source}), budget {budget:,}, {len(y)} images")
            if have_peer:
                o = run_torchattacks_square(net, x, y, norm, eps, budget, args.seed)
                rows.append(row(norm, eps, budget, PEER, o, "p_init 0.8, margin, 1 restart"))
                log(f"   {PEER:20s} {rows[-1]['success_pct']:5.1f}%  ({o.wall:.0f}s)")
                save()
            for m in args.methods:
                if m == "sign" and norm != "linf":
                    continue
                spec = spec_for(m, norm, budget, args.seed, args.max_batch)
                o = run_zoattack(spec, net, x, y)
                rows.append(row(norm, eps, budget, m, o, o.extra["method"]))
                log(f"   {m:20s} {rows[-1]['success_pct']:5.1f}%  ({o.wall:.0f}s)")
                save()
    lines = table(rows)
    if not have_peer and not args.no_peer:
        lines += ["", PEER_HINT]
    log("")
    for line in lines:
        log(line)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
