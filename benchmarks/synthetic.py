#!/usr/bin/env python
"""Synthetic benchmark: every update rule x gradient estimator at equal query budgets.

What it measures (all numbers come from this one run; nothing is hard-coded):

* Table 1: per function x d x rule x estimator, the final loss (mean +- std over seeds),
  the loss at a quarter and half of the budget, the ratio to the ZO-SGD + Gaussian baseline,
  and the queries needed to reach a threshold loss (and their ratio to the baseline).
* Table 2: the seed documents' claims, (a) ReLIZO reaches a loss with fewer queries than
  ZO-SGD, (b) R-AdaZO converges faster than ZO-AdaMM (same estimator, same budget), and
  (c) DAP has a lower estimator variance than Gaussian directions (at equal queries).
* Table 3: time per query of a whole optimisation run against a bare batched evaluation
  of the function at the same batch size (overhead factor).

Protocol (fair comparison):

* Every problem gets the same budget of queries (one query = one function value, the
  BlackBox ledger's count). All rules use K directions per step (``--samples``), i.e.
  K+1 queries per step (the base value f(x) is charged every step; ReLIZO spends fewer
  when it reuses probes).
* Learning rates do not transfer between estimators (sphere/Gaussian/DAP are unbiased,
  the LIZO estimate is about K/d of the gradient, sign and adaptive rules move each
  coordinate by about lr), so each (rule, estimator) gets its own lr, chosen by a
  log grid (factor sqrt(10)) on separate tuning start points (``--tune-seeds``, not
  among the evaluation seeds) by mean final loss; the grid is extended while the best
  value sits at an edge. At larger d the grid is 3 points around the best lr of the
  previous d (scaled by d'/d for LIZO-type estimates, whose scale is K/d).
* Every estimator probes at the same radius rho = mu*sqrt(d) (``--mu`` is the
  per-coordinate scale, the library default 1e-3 of gaussian/rademacher/dap/lizo; sphere
  and coordinate, whose ``mu`` is a radius, get mu*sqrt(d)). R-AdaZO and ZO-AdaMM
  therefore use the same probe radius (their library defaults differ: 5e-3 vs 1e-3).
* The coordinate estimator runs as ZO-SCD (K random coordinates per step, factor d/K):
  the full CGE costs d+1 queries per step, i.e. 5 steps at d=1000 and none at d=10000
  for a 5000-query budget, so it is not run.
* All seeds of one configuration run as one batch (one row per seed), from the same start
  points and generator seed for every (rule, estimator): comparisons are paired.

Threshold: ``--threshold auto`` (default): a seed's threshold is the loss the baseline
(ZO-SGD + Gaussian) has on that seed after half the budget (paired over seeds), so the
baseline needs about Q/2 queries by construction and any method's ratio is measurable
from 0 to 2. A number tau in (0, 1) instead fixes the threshold at f* + tau (f0 - f*).
Queries-to-threshold counts the queries spent up to and including the evaluation of the
first iterate whose loss is at or below the threshold.

Run: ``python benchmarks/synthetic.py`` (full: about 11 minutes on 2 shared CPU cores),
``--quick`` (d=1000, budget 1000: about 35 seconds), ``--out DIR`` for JSON and CSV.
torch runs single-threaded by default (``--threads``): the per-step tensors are small and
two OpenMP threads on a loaded 2-core machine made runs 10-100x slower.

The code is in three files: this one (options and the run), ``_synthetic_runs.py`` (pairs,
runs, tuning, variance, analysis) and ``_synthetic_tables.py`` (the printed tables).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _common import command_line, load_average, metadata, out_dir, write_csv, write_json
from _synthetic_runs import (
    BASELINE,
    COMBOS,
    LR_CENTRE,
    LR_CENTRE_LIZO,
    VAR_ESTIMATORS,
    Run,
    analyse,
    estimator_variance,
    is_lizo_scale,
    label,
    run_one,
    time_rules,
    tune_lr,
)
from _synthetic_tables import (
    make_console,
    table1,
    table2,
    table3,
)

from zoattack import (
    __version__,
    make_generator,
)
from zoattack.functions import get_function, starts


# ------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dims", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--functions", nargs="+", default=["quadratic", "rosenbrock"])
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds (rows of one batch)")
    p.add_argument("--budget", type=int, default=5000, help="queries per problem")
    p.add_argument("--samples", type=int, default=10, help="directions K per step (all rules)")
    p.add_argument(
        "--mu",
        type=float,
        default=1e-3,
        help="per-coordinate probe scale; probe radius mu*sqrt(d) for every estimator",
    )
    p.add_argument("--rules", nargs="+", default=None, help="subset of rules (baseline always run)")
    p.add_argument("--estimators", nargs="+", default=None, help="subset of estimators")
    p.add_argument(
        "--threshold",
        default="auto",
        help="'auto' (baseline's gap fraction at Q/2) or a fraction tau in (0,1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of start points and run generators")
    p.add_argument("--tune-seed", type=int, default=1000, help="seed of the lr-tuning start points")
    p.add_argument(
        "--tune-seeds",
        type=int,
        default=2,
        help="tuning start points (one batch); 1 above d=2000 where runs concentrate",
    )
    p.add_argument("--max-extend", type=int, default=2, help="grid extensions past an edge optimum")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 keeps torch's default). Per-step "
        "tensors are small, and with 2 threads on a 2-core machine that has any "
        "other load, OpenMP synchronisation made runs 10-100x slower (measured)",
    )
    p.add_argument(
        "--var-dims",
        type=int,
        nargs="+",
        default=None,
        help="dims of the variance study (default: 16, 100 and --dims up to 1000)",
    )
    p.add_argument("--var-k", type=int, nargs="+", default=[10, 20])
    p.add_argument("--var-points", type=int, default=2, help="random points besides the start")
    p.add_argument(
        "--var-draws",
        type=int,
        default=2000,
        help="estimator draws per point (a quarter of this above d=1000)",
    )
    p.add_argument("--var-mu", type=float, default=1e-5)
    p.add_argument("--var-estimators", nargs="+", default=list(VAR_ESTIMATORS))
    p.add_argument("--no-variance", action="store_true", help="skip Table 2c")
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument(
        "--timing-budget",
        type=int,
        default=1100,
        help="queries per problem of each timing run (capped at --budget)",
    )
    p.add_argument(
        "--all-timings",
        action="store_true",
        help="Table 3 for every (rule, estimator), not just paper pairings",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="d=1000 only, budget 1000, 2 seeds, small variance study (< 1 minute)",
    )
    p.add_argument("--out", type=Path, default=None, help="directory for results.json and CSVs")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.budget, args.seeds = [1000], 1000, 2
        args.var_k, args.var_draws, args.var_points = [10], 400, 1
        args.max_extend = 1
        args.timing_repeats = 2
    if args.var_dims is None:
        # d=10,000 adds ~10 minutes on 2 cores and nothing new: above d~100 every unbiased
        # estimator sits at NMSE ~ d/K (see Table 2c); pass --var-dims to include it.
        args.var_dims = [16, 100] + [d for d in args.dims if 100 < d <= 1000]
        if args.quick:
            args.var_dims = [16, 1000]
    args.dims = sorted(set(args.dims))
    if args.threshold != "auto":
        tau = float(args.threshold)
        if not 0 < tau < 1:
            p.error("--threshold must be 'auto' or a number in (0, 1)")
    for flag, given, known in (
        ("--rules", args.rules, {c[0] for c in COMBOS}),
        ("--estimators", args.estimators, {c[1] for c in COMBOS}),
        ("--var-estimators", args.var_estimators, set(VAR_ESTIMATORS)),
    ):
        bad = sorted(set(given or ()) - known)
        if bad:
            p.error(f"{flag}: unknown {', '.join(bad)}; choose from {', '.join(sorted(known))}")
    combos = [
        c
        for c in COMBOS
        if (args.rules is None or c[0] in args.rules)
        and (args.estimators is None or c[1] in args.estimators)
    ]
    if BASELINE not in combos:
        combos.insert(0, BASELINE)
    args.combos = combos
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    con = make_console()

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    cmd = command_line()
    con.print(f"command: {cmd}")
    con.print(
        f"zoattack {__version__}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, "
        f"dtype {args.dtype}, cpu count {os.cpu_count()}, load avg "
        f"{' '.join(f'{v:.2f}' for v in load_average() or ())}"
    )
    con.print(
        f"dims {args.dims}, functions {args.functions}, seeds {args.seeds}, budget "
        f"{args.budget:,}, K={args.samples}, probe radius {args.mu:g}*sqrt(d), "
        f"threshold {args.threshold}; combos: " + ", ".join(label(*c) for c in args.combos)
    )
    con.print(
        "skipped: full coordinate estimator (d+1 queries per step; run as K random "
        "coordinates instead), LIZO estimates with sign/adaptive rules.\n"
    )
    t_start = time.perf_counter()

    runs: dict[tuple, Run] = {}
    tuning: dict[tuple, dict[float, float]] = {}
    for fname in args.functions:
        fn = get_function(fname)
        prev_best: dict[tuple[str, str], tuple[int, float]] = {}
        for d in args.dims:
            x0 = starts(fn, args.seeds, d, make_generator(args.seed), dtype)
            n_tune = args.tune_seeds if d <= 2000 else 1
            x_tune = starts(fn, n_tune, d, make_generator(args.tune_seed), dtype)
            log(f"== {fname} d={d} ({time.perf_counter() - t_start:.0f}s elapsed)")
            for rule, est in args.combos:
                if (rule, est) in prev_best:
                    pd, plr = prev_best[(rule, est)]
                    centre = plr * (d / pd if is_lizo_scale(rule, est) else 1.0)
                    half = 1
                elif is_lizo_scale(rule, est):
                    centre, half = LR_CENTRE_LIZO * d / args.samples, 2
                else:
                    # SGD on an unbiased estimate: the stable lr grows with K
                    k_scale = args.samples / 10 if rule == "zo_sgd" else 1.0
                    centre, half = LR_CENTRE[rule] * k_scale, 2
                extend = args.max_extend if half == 2 else min(1, args.max_extend)
                lr, scores = tune_lr(fn, x_tune, rule, est, centre, half, extend, args, log)
                prev_best[(rule, est)] = (d, lr)
                tuning[(fname, d, rule, est)] = scores
                run = run_one(fn, x0, rule, est, lr, args, seed=args.seed)
                runs[(fname, d, rule, est)] = run
                fm = statistics.fmean(run.final) if not run.diverged else float("inf")
                log(
                    f"  eval {label(rule, est):22s} lr={lr:<10.4g} final={fm:.5g} "
                    f"[{run.wall_s:.1f}s]{' DIVERGED ' + run.error if run.diverged else ''}"
                )

    info = analyse(runs, args)
    var_rows: list[dict[str, Any]] = []
    t3: list[dict[str, Any]] = []
    try:  # a failure here must not lose the optimisation results above
        var_rows = [] if args.no_variance else estimator_variance(args, log)
        t3 = time_rules(runs, args, dtype, log)
    except Exception:
        traceback.print_exc()
    con.print()
    t1 = table1(con, runs, info, args)
    claims = table2(con, runs, var_rows, args)
    table3(con, t3, args)
    total = time.perf_counter() - t_start
    con.print(
        f"total wall time {total:.0f}s; load avg at end "
        f"{' '.join(f'{v:.2f}' for v in load_average() or ())}"
    )

    if args.out is not None:
        out_dir(args.out)
        meta = {
            **metadata(),
            "command": cmd,
            "zoattack": __version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "wall_s": total,
            **{k: v for k, v in vars(args).items() if k not in ("out",)},
        }
        meta["combos"] = [list(c) for c in args.combos]
        payload = {
            "meta": meta,
            "thresholds": [{"function": k[0], "dim": k[1], **v} for k, v in info.items()],
            "tuning": [
                {
                    "function": k[0],
                    "dim": k[1],
                    "rule": k[2],
                    "estimator": k[3],
                    "scores": {str(lr): s for lr, s in v.items()},
                }
                for k, v in tuning.items()
            ],
            "table1": t1,
            "claims": claims,
            "variance": var_rows,
            "timing": t3,
            "runs": [asdict(r) for r in runs.values()],
        }
        write_json(args.out / "results.json", payload, indent=1)
        run_rows = [
            {
                "function": r.function,
                "dim": r.dim,
                "rule": r.rule,
                "estimator": r.estimator,
                "lr": r.lr,
                "seed": i,
                "f0": r.f0[i] if r.f0 else "",
                "final_loss": r.final[i],
                "queries": r.queries[i] if r.queries else "",
                "steps": r.steps[i] if r.steps else "",
                "threshold": r.threshold[i] if r.threshold else "",
                "queries_to_threshold": r.q_thr[i] if r.q_thr and r.q_thr[i] is not None else "",
                "wall_s": f"{r.wall_s:.3f}",
                "diverged": r.diverged,
            }
            for r in runs.values()
            for i in range(r.seeds)
        ]
        write_csv(args.out / "runs.csv", run_rows)
        curve = ("function", "dim", "rule", "estimator", "seed", "queries", "loss")
        curve_rows = [
            dict(zip(curve, (r.function, r.dim, r.rule, r.estimator, i, q, loss), strict=True))
            for r in runs.values()
            for i, h in enumerate(r.history)
            for q, loss in [(0, r.f0[i]), *h]
        ]
        write_csv(args.out / "curves.csv", curve_rows, curve)
        if var_rows:
            keys = [k for k in var_rows[0] if k != "per_point"]
            write_csv(args.out / "variance.csv", var_rows, keys)
        con.print(
            f"wrote {args.out}/results.json, runs.csv, curves.csv"
            + (", variance.csv" if var_rows else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
