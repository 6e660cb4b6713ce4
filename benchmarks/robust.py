#!/usr/bin/env python
"""Robust-victim benchmark: every default black-box attack of zoattack, torchattacks' Square and
white-box PGD on the adversarially trained victims, same tensors, one run.

What it measures (every number comes from this one run; nothing is hard-coded):

* Victims: the shipped robust Fashion-MNIST models ``small_cnn_robust`` and ``resnet20_robust``
  (PGD adversarial training at Linf 0.1; their cards hold the recipe). Images: the first
  ``--images`` test images each victim classifies correctly; a budget given in ``--images-at``
  (e.g. ``10000=20``) runs on the first N of those only (the same prefix for every method).
* Threat models: Linf eps 0.1 and L2 eps 1.5, untargeted, margin loss. Budgets: ``--budgets``.
* zoattack: every rule of the registry with the settings ``zoattack run`` uses by default (each
  gradient rule with its own paper's estimator and registry defaults; ``sign`` is Linf only),
  through :func:`zoattack.attacks.run_attack` on the :class:`zoattack.blackbox.BlackBox`
  ledger (benchmarks/attack.py's runner, ``--tune off``).
* Peer: torchattacks' Square (p_init 0.8, margin loss, one restart), counted with its own
  per-image counter + 1 clean check, ``n_queries = budget - 2`` (benchmarks/attack.py).
* White-box reference: :class:`zoattack.attacks.pgd.PGD` (``zoattack eval``), 50 steps x 10
  restarts by default, step 2.5 eps / steps, margin loss, random starts. It uses gradients, not
  queries: its cost column is gradient calls per image (forward + backward), labelled so.

Success = the returned point is misclassified (re-checked with an uncounted forward), inside the
eps-ball and [0, 1], and its query count is within the budget; among initially-correct images it
is 1 - robust accuracy. Median queries are over successes.

Targets (issue 14), each printed as PASS/FAIL with the numbers: zoattack's best black-box attack
within 3 points of PGD's success at 10,000 queries; zoattack's best >= torchattacks Square + 2
points at 1,000; best and worst zoattack attack >= 10 points apart.

Run: ``python benchmarks/robust.py --quick`` (a few minutes), or the issue's full size
``python benchmarks/robust.py --images 100 --budgets 1000 10000 --threads 1 --out bench_robust``.
On a small machine split it: ``--images 20 --offset 20`` runs correct images 20..39, and
``--merge A/results.json B/results.json`` pools runs on disjoint images exactly (per-image
successes and costs are kept in results.json). Stochastic attacks draw their randomness per
batch, so a split run is a different random draw from the unsplit one, not the same numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
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
from attack import (
    ALL_METHODS,
    GRADIENT_RULES,
    Config,
    Outcome,
    run_torchattacks_square,
    run_zoattack,
    select_images,
    verify,
)
from torch import Tensor, nn

from zoattack.attacks.pgd import PGD
from zoattack.models import create_model
from zoattack.norms import DEFAULT_EPS
from zoattack.seeding import make_generator

VICTIMS = ("small_cnn_robust", "resnet20_robust")
PEER = "torchattacks_square"
WHITE_BOX = "pgd"


def run_pgd(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    steps: int,
    restarts: int,
    seed: int,
) -> tuple[Tensor, Tensor, float, str]:
    """Per image: verified success and gradient calls (to first success, or all of them)."""
    atk = PGD(norm, eps, steps=steps, restarts=restarts, loss="margin")
    t0 = time.perf_counter()
    res = atk.perturb(net, x, y, generator=make_generator(seed, x.device))
    wall = time.perf_counter() - t0
    ok, _ = verify(net, res.x_adv, x, y, norm, eps, torch.zeros(len(y), dtype=torch.long), 0)
    return ok & res.success, res.gradient_calls.cpu(), wall, atk.describe()


def row(
    victim: str,
    norm: str,
    eps: float,
    budget: int,
    method: str,
    kind: str,
    config: str,
    success: Tensor,
    cost: Tensor,
    wall: float,
    notes: str = "",
) -> dict[str, Any]:
    n, s = len(success), int(success.sum())
    q = cost[success].double()
    return {
        "victim": victim,
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "method": method,
        "kind": kind,
        "config": config,
        "images": n,
        "successes": s,
        "success_pct": 100.0 * s / n if n else None,
        "median_cost": float(q.median()) if s else None,
        "mean_cost": float(q.mean()) if s else None,
        "cost_unit": "gradient calls" if kind == "white-box" else "queries",
        "wall_s": wall,
        "notes": notes,
        # Per image, so runs on disjoint image ranges (--offset) merge exactly (--merge).
        "per_image_success": [int(v) for v in success.tolist()],
        "per_image_cost": [int(v) for v in cost.tolist()],
    }


def merge(files: list[Path]) -> list[dict]:
    """Rows of several runs on disjoint image ranges, pooled per (victim, norm, budget, method):
    successes and per-image costs concatenated, medians recomputed, wall times summed."""
    pooled: dict[tuple, dict] = {}
    for f in files:
        data = json.loads(f.read_text())
        for r in data["rows"]:
            key = (r["victim"], r["norm"], r["budget"], r["method"])
            if key not in pooled:
                pooled[key] = {**r, "per_image_success": [], "per_image_cost": [], "wall_s": 0.0}
            p = pooled[key]
            p["per_image_success"] += r["per_image_success"]
            p["per_image_cost"] += r["per_image_cost"]
            p["wall_s"] += r["wall_s"]
    out = []
    for p in pooled.values():
        ok = torch.tensor(p["per_image_success"], dtype=torch.bool)
        cost = torch.tensor(p["per_image_cost"], dtype=torch.long)
        out.append(
            row(
                p["victim"],
                p["norm"],
                p["eps"],
                p["budget"],
                p["method"],
                p["kind"],
                p["config"],
                ok,
                cost,
                p["wall_s"],
                p["notes"],
            )
        )
    return out


def table(rows: list[dict]) -> list[str]:
    header = [
        "victim",
        "norm",
        "budget",
        "images",
        "method",
        "success %",
        "median queries",
        "vs PGD (pts)",
        "vs TA Square (pts)",
        "wall s",
    ]
    body = []
    ref: dict[tuple, dict] = {}
    for r in rows:
        ref[(r["victim"], r["norm"], r["budget"], r["method"])] = r
    for r in rows:
        key = (r["victim"], r["norm"], r["budget"])
        pgd, ta = ref.get((*key, WHITE_BOX)), ref.get((*key, PEER))

        def diff(other: dict | None, r: dict = r) -> str:
            if other is None or other is r or r["success_pct"] is None:
                return "-"
            return f"{r['success_pct'] - other['success_pct']:+.1f}"

        med = fmt(r["median_cost"], ".0f")
        if r["kind"] == "white-box" and r["median_cost"] is not None:
            med += " grad"
        body.append(
            [
                r["victim"],
                r["norm"],
                f"{r['budget']:,}",
                str(r["images"]),
                r["method"] + (" (white-box)" if r["kind"] == "white-box" else ""),
                fmt(r["success_pct"], ".1f"),
                med,
                diff(pgd),
                diff(ta),
                fmt(r["wall_s"], ".0f"),
            ]
        )
    return markdown_table(header, body)


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    groups = sorted({(r["victim"], r["norm"], r["budget"]) for r in rows}, key=str)
    for key in groups:
        g = [r for r in rows if (r["victim"], r["norm"], r["budget"]) == key]
        zo = [r for r in g if r["kind"] == "zoattack" and r["success_pct"] is not None]
        pgd = next((r for r in g if r["method"] == WHITE_BOX), None)
        ta = next((r for r in g if r["method"] == PEER), None)
        if len(zo) < 2:
            continue
        best = max(zo, key=lambda r: r["success_pct"])
        worst = min(zo, key=lambda r: r["success_pct"])
        tag = f"{key[0]} {key[1]} budget {key[2]:,} ({best['images']} images)"
        if key[2] >= 10_000 and pgd is not None:
            gap = best["success_pct"] - pgd["success_pct"]
            out.append(
                f"[{'PASS' if gap >= -3 else 'FAIL'}] best black-box within 3 pts of PGD, {tag}: "
                f"{best['method']} {best['success_pct']:.1f}% vs PGD {pgd['success_pct']:.1f}% "
                f"({gap:+.1f})"
            )
        if key[2] <= 1_000 and ta is not None:
            gap = best["success_pct"] - ta["success_pct"]
            out.append(
                f"[{'PASS' if gap >= 2 else 'FAIL'}] best >= torchattacks Square + 2, {tag}: "
                f"{best['method']} {best['success_pct']:.1f}% vs {ta['success_pct']:.1f}% "
                f"({gap:+.1f})"
            )
        spread = best["success_pct"] - worst["success_pct"]
        out.append(
            f"[{'PASS' if spread >= 10 else 'FAIL'}] best-worst zoattack separation >= 10 pts, "
            f"{tag}: {best['method']} {best['success_pct']:.1f}% - {worst['method']} "
            f"{worst['success_pct']:.1f}% = {spread:.1f}"
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--victims", nargs="+", default=list(VICTIMS))
    p.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--images", type=int, default=100)
    p.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip the first K initially-correct images (split one size into runs that "
        "--merge pools)",
    )
    p.add_argument(
        "--images-at",
        nargs="*",
        default=[],
        metavar="BUDGET=N",
        help="fewer images at a budget (the first N of the selected ones), e.g. 10000=20",
    )
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--no-peer", action="store_true", help="skip torchattacks' Square")
    p.add_argument("--eps-linf", type=float, default=DEFAULT_EPS["linf"])
    p.add_argument("--eps-l2", type=float, default=DEFAULT_EPS["l2"])
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--pgd-restarts", type=int, default=10)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write results.json/.csv/table.md here")
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="pool results.json files of runs on disjoint images (--offset) into one table",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small_cnn_robust, linf, budget 1000, 20 images, PGD 20 x 2 (a few minutes)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.victims, a.norms, a.budgets, a.images = ["small_cnn_robust"], ["linf"], [1000], 20
        a.pgd_steps, a.pgd_restarts = 20, 2
    a.images_at = {int(k): int(v) for k, v in (s.split("=", 1) for s in a.images_at)}
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        rows = merge(args.merge)
        lines = [*table(rows), "", *verdicts(rows)]
        for line in lines:
            log(line)
        if args.out is not None:
            d = out_dir(args.out)
            write_json(d / "results.json", {"merged": [str(f) for f in args.merge], "rows": rows})
            (d / "table.md").write_text("\n".join(lines) + "\n")
        return 0
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    vers = versions("torchattacks")
    log("command: " + command_line())
    log("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in vers.items()))
    load = load_average()
    log(
        f"torch threads {torch.get_num_threads()}, load average "
        f"{', '.join(f'{v:.1f}' for v in load) if load else '?'}"
    )
    eps_of = {"linf": args.eps_linf, "l2": args.eps_l2}
    rows: list[dict] = []
    meta = metadata(args={k: str(v) for k, v in vars(args).items()})

    def save() -> None:
        if args.out is None or not rows:
            return
        d = out_dir(args.out)
        write_json(d / "results.json", {"metadata": meta, "rows": rows})
        write_csv(d / "results.csv", rows, [k for k in rows[0] if not k.startswith("per_")])
        lines = [*table(rows), "", *verdicts(rows)]
        (d / "table.md").write_text("\n".join(lines) + "\n")

    for victim in args.victims:
        net = create_model(victim, dataset=args.dataset, pretrained=True, device="cpu").eval()
        x_all, y_all, _, _, span = select_images(net, args.dataset, args.offset + args.images, 0)
        x_all, y_all = x_all[args.offset :], y_all[args.offset :]
        log(
            f"\n== {victim}: {len(y_all)} initially-correct images (numbers {args.offset}.."
            f"{args.offset + len(y_all) - 1} among the correct ones; first {span} test images)"
        )
        for norm in args.norms:
            eps = eps_of[norm]
            ok_pgd, calls_pgd, wall_pgd, desc = run_pgd(
                net, x_all, y_all, norm, eps, args.pgd_steps, args.pgd_restarts, args.seed
            )
            log(
                f"-- {victim} {norm} eps={eps:g}: {desc}: {100 * ok_pgd.float().mean():.1f}% "
                f"({wall_pgd:.0f}s)"
            )
            for budget in args.budgets:
                n = min(args.images_at.get(budget, args.images), len(y_all))
                x, y = x_all[:n], y_all[:n]
                log(f"-- {victim} {norm} eps={eps:g} budget {budget:,}, {n} images")
                # PGD ran once on all images; each budget reads the prefix it evaluates, and
                # its wall time is scaled to that prefix.
                rows.append(
                    row(
                        victim,
                        norm,
                        eps,
                        budget,
                        WHITE_BOX,
                        "white-box",
                        desc,
                        ok_pgd[:n],
                        calls_pgd[:n],
                        wall_pgd * n / len(y_all),
                    )
                )
                for m in args.methods:
                    if m == "sign" and norm != "linf":
                        continue
                    cfg = Config.cli_default(m, norm, eps) if m in GRADIENT_RULES else Config()
                    o: Outcome = run_zoattack(
                        m, net, x, y, norm, eps, budget, cfg, args.seed, args.max_batch
                    )
                    rows.append(
                        row(
                            victim,
                            norm,
                            eps,
                            budget,
                            m,
                            "zoattack",
                            cfg.label(m, norm, eps),
                            o.success,
                            o.queries,
                            o.wall,
                            "; ".join(o.notes),
                        )
                    )
                    log(f"   {m:12s} {rows[-1]['success_pct']:5.1f}%  ({o.wall:.0f}s)")
                    save()
                if not args.no_peer:
                    try:
                        o = run_torchattacks_square(net, x, y, norm, eps, budget, args.seed)
                    except ImportError:
                        log("   torchattacks not installed: Square skipped")
                    else:
                        rows.append(
                            row(
                                victim,
                                norm,
                                eps,
                                budget,
                                PEER,
                                "peer",
                                "p_init 0.8, margin, 1 restart",
                                o.success,
                                o.queries,
                                o.wall,
                                "; ".join(o.notes),
                            )
                        )
                        log(f"   {PEER:12s} {rows[-1]['success_pct']:5.1f}%  ({o.wall:.0f}s)")
                save()
    log("")
    for line in table(rows):
        log(line)
    log("")
    for line in verdicts(rows):
        log(line)
    meds = [r["wall_s"] for r in rows]
    log(
        f"\ntotal {time.perf_counter() - t_start:.0f}s, median wall per row "
        f"{statistics.median(meds) if meds else 0:.0f}s"
    )
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
