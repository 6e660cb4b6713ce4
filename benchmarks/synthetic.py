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
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import command_line, load_average, metadata, out_dir, timed, write_csv, write_json
from rich import box
from rich.console import Console
from rich.table import Table

from zoattack import (
    BlackBox,
    FunctionObjective,
    ZOAttackError,
    __version__,
    create_estimator,
    create_optimizer,
    make_generator,
    minimize,
)
from zoattack.functions import get_function, starts
from zoattack.optim import OPTIMIZERS

BASELINE = ("zo_sgd", "gaussian")

# (rule, estimator) pairs run by default: each rule's paper pairing first, then the
# estimators that make sense with it. LIZO estimates with sign/adaptive rules and the
# full coordinate estimator are left out (see the module docstring).
COMBOS: list[tuple[str, str]] = [
    ("zo_sgd", "gaussian"),
    ("zo_sgd", "sphere"),
    ("zo_sgd", "dap"),
    ("zo_sgd", "coordinate"),
    ("zo_sgd", "lizo"),
    ("zo_signsgd", "sphere"),
    ("zo_signsgd", "gaussian"),
    ("zo_signsgd", "dap"),
    ("zo_adamm", "sphere"),
    ("zo_adamm", "gaussian"),
    ("zo_adamm", "dap"),
    ("radazo", "sphere"),
    ("radazo", "gaussian"),
    ("radazo", "dap"),
    ("lizo", "lizo"),
]
# Each rule's paper estimator, from the rule itself (its class's ``default_estimator``).
PAPER_DEFAULT = {
    e.name: e.factory.default_estimator  # type: ignore[attr-defined]
    for e in OPTIMIZERS
    if not e.flags.get("search")
}

# Centre of this benchmark's lr search grid at d=1000 with K=10 (grid: centre * 10^{-1, -1/2,
# 0, 1/2, 1}); not a default: `zoattack optimize` steps are the rules' ``optimize_defaults``.
# Unbiased estimates with SGD: stable up to about K/(L d), which is d-independent here
# because both functions are averaged over coordinates. LIZO-type estimates are K/d of the
# gradient, so their lr is multiplied by d/K. Sign and adaptive rules: lr is a move per
# coordinate and step.
LR_CENTRE = {"zo_sgd": 0.03, "zo_signsgd": 3e-3, "zo_adamm": 1e-2, "radazo": 1e-2}
LR_CENTRE_LIZO = 0.03  # times d / K
HALF_DECADE = math.sqrt(10.0)
# Directions are drawn from a generator seeded apart from the start points': with the same
# seed the first Gaussian direction would equal the (Gaussian) start point, a lucky first
# step on the quadratic whose gradient is aligned with x.
RUN_SEED_OFFSET = 1_000_003

VAR_ESTIMATORS = ("gaussian", "sphere", "rademacher", "dap", "coordinate", "lizo")


# ---------------------------------------------------------------------- helpers
def label(rule: str, est: str) -> str:
    return f"{rule}+{est}"


def is_lizo_scale(rule: str, est: str) -> bool:
    return est == "lizo"


def radius_mu(est: str, mu: float, d: int) -> float:
    """The ``mu`` that makes estimator ``est`` probe at radius ``mu*sqrt(d)``."""
    return mu * math.sqrt(d) if est in ("sphere", "coordinate") else mu


def make_rule(rule: str, est: str, lr: float, k: int, mu: float, d: int):
    return create_optimizer(rule, lr=lr, estimator=est, num_samples=k, mu=radius_mu(est, mu, d))


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def loss_at(history: list[tuple[int, float]], f0: float, q: float) -> float:
    """Loss of the last iterate evaluated with at most ``q`` queries spent (f0 at q=0)."""
    val = f0
    prev_q = 0
    for spent, loss in history:
        # history[t] = (queries after step t, f(x_t)); f(x_t) was known after prev_q + 1.
        if prev_q + 1 > q:
            break
        val = loss
        prev_q = spent
    return val


def queries_to(history: list[tuple[int, float]], threshold: float) -> int | None:
    """Queries spent up to the evaluation of the first iterate with loss <= threshold."""
    prev_q = 0
    for spent, loss in history:
        if loss <= threshold:
            return prev_q + 1
        prev_q = spent
    return None


def mean_std(vals: list[float]) -> tuple[float, float]:
    if not vals:
        return float("nan"), float("nan")
    m = statistics.fmean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return m, s


def safe_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


# ------------------------------------------------------------------------ runs
@dataclass
class Run:
    function: str
    dim: int
    rule: str
    estimator: str
    lr: float
    seeds: int
    budget: int
    diverged: bool = False
    error: str = ""
    f0: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    wall_s: float = float("nan")
    history: list[list[tuple[int, float]]] = field(default_factory=list)
    # filled in by the analysis
    threshold: list[float] = field(default_factory=list)
    q_thr: list[int | None] = field(default_factory=list)


def bare_eval_time(fn: Any, batch: int, d: int, dtype: torch.dtype, repeats: int = 50) -> float:
    """Seconds per point of ``fn`` on a ``(batch, d)`` tensor (the bare black box): the
    minimum over ``repeats`` calls, the usual estimator under interference from other load."""
    x = torch.randn(batch, d, generator=make_generator(123), dtype=dtype)
    return timed(lambda: fn(x), repeats, warmup=3, reduce=min) / batch


def run_one(
    fn: Any, x0: torch.Tensor, rule: str, est: str, lr: float, args: argparse.Namespace, seed: int
) -> Run:
    n, d = x0.shape
    r = Run(fn.name, d, rule, est, lr, n, args.budget)
    r.f0 = [float(v) for v in fn(x0).double()]
    bb = BlackBox(fn, output="scores", bounds=None)
    obj = FunctionObjective(bb)
    gen = make_generator(seed + RUN_SEED_OFFSET)
    rl = make_rule(rule, est, lr, args.samples, args.mu, d)
    t = time.perf_counter()
    try:
        res = minimize(obj, x0, rl, generator=gen, budget=args.budget)
    except (ZOAttackError, ValueError, RuntimeError) as exc:  # divergence: inf/NaN iterates
        r.wall_s = time.perf_counter() - t
        r.diverged, r.error = True, f"{type(exc).__name__}: {str(exc)[:120]}"
        r.final = [float("inf")] * n
        return r
    r.wall_s = time.perf_counter() - t
    final = fn(res.x).double()  # bookkeeping outside the ledger, not a query
    r.final = [float(v) if math.isfinite(float(v)) else float("inf") for v in final]
    r.diverged = not all(math.isfinite(v) for v in r.final)
    r.queries = [int(q) for q in res.queries]
    r.steps = [int(s) for s in res.steps]
    r.history = res.history
    return r


def time_rules(
    runs: dict[tuple, Run], args: argparse.Namespace, dtype: torch.dtype, log: Any
) -> list[dict[str, Any]]:
    """Table 3 data: each rule with its paper estimator (and the baseline), at its tuned lr,
    run ``--timing-repeats`` times on the evaluation batch with ``--timing-budget`` queries;
    the fastest repeat is kept (robust to other load), as is the bare evaluation."""
    rows = []
    budget = min(args.budget, args.timing_budget)
    for fname in args.functions:
        fn = get_function(fname)
        for d in args.dims:
            x0 = starts(fn, args.seeds, d, make_generator(args.seed), dtype)
            for rule, est in args.combos:
                run = runs.get((fname, d, rule, est))
                if (
                    run is None
                    or run.diverged
                    or (
                        PAPER_DEFAULT[rule] != est
                        and (rule, est) != BASELINE
                        and not args.all_timings
                    )
                ):
                    continue
                walls, queries = [], 0
                for _ in range(args.timing_repeats):
                    bb = BlackBox(fn, output="scores", bounds=None)
                    rl = make_rule(rule, est, run.lr, args.samples, args.mu, d)
                    t = time.perf_counter()
                    minimize(
                        FunctionObjective(bb),
                        x0,
                        rl,
                        generator=make_generator(args.seed + RUN_SEED_OFFSET),
                        budget=budget,
                    )
                    walls.append(time.perf_counter() - t)
                    queries = bb.total_queries
                batch = args.seeds * rl.max_queries_per_step(d)
                bare = bare_eval_time(fn, batch, d, dtype)
                per_q = min(walls) / queries
                rows.append(
                    {
                        "function": fname,
                        "dim": d,
                        "rule": rule,
                        "estimator": est,
                        "batch": batch,
                        "wall_s_min": min(walls),
                        "wall_s_all": walls,
                        "queries": queries,
                        "us_per_query": per_q * 1e6,
                        "bare_us_per_point": bare * 1e6,
                        "overhead": per_q / bare,
                        "eval_run_us_per_query": run.wall_s / max(1, sum(run.queries)) * 1e6,
                    }
                )
                log(
                    f"  timing {fname} d={d} {label(rule, est):22s} {per_q * 1e6:.1f} us/query, "
                    f"bare {bare * 1e6:.2f} us/point"
                )
    return rows


def lr_grid(centre: float, half_width: int) -> list[float]:
    return [centre * HALF_DECADE**i for i in range(-half_width, half_width + 1)]


def tune_lr(
    fn: Any,
    x_tune: torch.Tensor,
    rule: str,
    est: str,
    centre: float,
    half_width: int,
    extend: int,
    args: argparse.Namespace,
    log: Any,
) -> tuple[float, dict[float, float]]:
    """Best lr by mean final loss on the tuning starts (rows of ``x_tune``); extends the grid
    past an edge optimum (at most ``--max-extend`` times)."""
    scores: dict[float, float] = {}

    def score(lr: float) -> float:
        key = float(f"{lr:.6g}")
        if key not in scores:
            run = run_one(fn, x_tune, rule, est, key, args, seed=args.tune_seed)
            scores[key] = statistics.fmean(run.final) if not run.diverged else float("inf")
            log(
                f"    tune {label(rule, est):22s} lr={key:<10.4g} final={scores[key]:.5g}"
                f"{' (diverged)' if run.diverged else ''} [{run.wall_s:.1f}s]"
            )
        return scores[key]

    grid = [float(f"{v:.6g}") for v in lr_grid(centre, half_width)]
    for lr in grid:
        score(lr)
    for _ in range(extend):
        best = min(scores, key=lambda k: scores[k])
        lo, hi = min(scores), max(scores)
        if best == lo and math.isfinite(scores[best]):
            score(lo / HALF_DECADE)
        elif best == hi and math.isfinite(scores[best]):
            score(hi * HALF_DECADE)
        else:
            break
    best = min(scores, key=lambda k: scores[k])
    return best, scores


# -------------------------------------------------------------------- variance
def estimator_variance(args: argparse.Namespace, log: Any) -> list[dict[str, Any]]:
    """NMSE and cosine of each estimator at fixed points, float64, equal probe radius."""
    rows = []
    dtype = torch.float64
    for fname in args.functions:
        fn = get_function(fname)
        for d in args.var_dims:
            gpts = make_generator(args.tune_seed + 7)
            pts = [("start", starts(fn, 1, d, make_generator(args.tune_seed), dtype)[0])]
            for j in range(args.var_points):
                pts.append((f"rand{j}", torch.randn(d, generator=gpts, dtype=dtype)))
            draws = args.var_draws if d <= 1000 else max(100, args.var_draws // 4)
            for k in args.var_k:
                for est in args.var_estimators:
                    if est in ("coordinate", "lizo") and k >= d:
                        continue  # both cap K at d: fewer queries, not comparable
                    t0 = time.perf_counter()
                    per_point = []
                    for pname, x in pts:
                        xg = x.clone().requires_grad_(True)
                        fn(xg.unsqueeze(0)).sum().backward()
                        g = xg.grad.detach()
                        gn2 = float(g @ g)
                        e = create_estimator(est, num_samples=k, mu=radius_mu(est, args.var_mu, d))
                        gen = make_generator(2 * RUN_SEED_OFFSET + 101 * len(rows))
                        chunk = max(1, min(draws, int(4e6 // ((k + 1) * d))))
                        err2, cos, dots, norms2 = [], [], [], []
                        done = 0
                        while done < draws:
                            m = min(chunk, draws - done)
                            bb = BlackBox(fn, output="scores", bounds=None)
                            if hasattr(e, "reset"):
                                e.reset()
                            gh = e.estimate(
                                FunctionObjective(bb), x.expand(m, d).contiguous(), generator=gen
                            ).grad.double()
                            assert bb.total_queries == m * e.queries_per_call(d) == m * (k + 1)
                            err2.append(((gh - g) ** 2).sum(1) / gn2)
                            dot = gh @ g
                            nrm = gh.norm(dim=1)
                            cos.append(dot / (nrm * math.sqrt(gn2)).clamp_min(1e-300))
                            dots.append(dot / gn2)
                            norms2.append(nrm**2 / gn2)
                            done += m
                        err2_t, cos_t = torch.cat(err2), torch.cat(cos)
                        dots_t, n2_t = torch.cat(dots), torch.cat(norms2)
                        per_point.append(
                            {
                                "point": pname,
                                "nmse": float(err2_t.mean()),
                                "nmse_se": float(err2_t.std() / math.sqrt(len(err2_t))),
                                "cos": float(cos_t.mean()),
                                "cos_se": float(cos_t.std() / math.sqrt(len(cos_t))),
                                # min_c E||c g_hat - g||^2 / ||g||^2: scale-free (LIZO: K/d-scaled)
                                "nmse_rescaled": float(1 - dots_t.mean() ** 2 / n2_t.mean()),
                                "bias_scale": float(dots_t.mean()),
                            }
                        )
                    npts = len(per_point)
                    row = {
                        "function": fname,
                        "dim": d,
                        "K": k,
                        "estimator": est,
                        "queries_per_draw": k + 1,
                        "draws_per_point": draws,
                        "points": npts,
                        "nmse": statistics.fmean(p["nmse"] for p in per_point),
                        "nmse_se": math.sqrt(sum(p["nmse_se"] ** 2 for p in per_point)) / npts,
                        "cos": statistics.fmean(p["cos"] for p in per_point),
                        "cos_se": math.sqrt(sum(p["cos_se"] ** 2 for p in per_point)) / npts,
                        "nmse_rescaled": statistics.fmean(p["nmse_rescaled"] for p in per_point),
                        "bias_scale": statistics.fmean(p["bias_scale"] for p in per_point),
                        "per_point": per_point,
                    }
                    rows.append(row)
                    log(
                        f"  variance {fname} d={d} K={k} {est:10s} nmse={row['nmse']:.4g} "
                        f"cos={row['cos']:.4f} [{time.perf_counter() - t0:.1f}s]"
                    )
    return rows


# -------------------------------------------------------------------- analysis
def analyse(runs: dict[tuple, Run], args: argparse.Namespace) -> dict[tuple, dict[str, Any]]:
    """Thresholds, queries-to-threshold and ratios vs the baseline, per (function, d)."""
    out: dict[tuple, dict[str, Any]] = {}
    for fname in args.functions:
        fn = get_function(fname)
        fstar = fn.minimum
        for d in args.dims:
            base = runs.get((fname, d) + BASELINE)
            if base is None:
                continue
            if args.threshold == "auto" and not base.diverged:
                # per seed: the loss the baseline has after half the budget on that seed
                fracs = [
                    (loss_at(h, f0, args.budget / 2) - fstar) / (f0 - fstar)
                    for h, f0 in zip(base.history, base.f0)
                ]
            else:
                fracs = [0.5 if args.threshold == "auto" else float(args.threshold)] * base.seeds
            frac = statistics.fmean(fracs)
            out[(fname, d)] = {"threshold_fraction": frac, "per_seed_fraction": fracs}
            for key, run in runs.items():
                if key[:2] != (fname, d):
                    continue
                run.threshold = [fstar + fr * (f0 - fstar) for fr, f0 in zip(fracs, run.f0)]
                run.q_thr = (
                    [queries_to(h, t) for h, t in zip(run.history, run.threshold)]
                    if not run.diverged
                    else [None] * run.seeds
                )
    return out


def summary(run: Run, base: Run | None) -> dict[str, Any]:
    fm, fs = mean_std(run.final)
    q = run.q_thr
    reached = sum(v is not None for v in q)
    qm = statistics.fmean(q) if q and reached == len(q) else None  # type: ignore[arg-type]
    bm = None
    if base is not None and base.q_thr and all(v is not None for v in base.q_thr):
        bm = statistics.fmean(base.q_thr)  # type: ignore[arg-type]

    def curve_mean(q: float) -> float:
        if not run.history:
            return float("nan")
        return statistics.fmean(loss_at(h, f0, q) for h, f0 in zip(run.history, run.f0))

    return {
        "final_mean": fm,
        "final_std": fs,
        "loss_q4": curve_mean(run.budget / 4),
        "loss_q2": curve_mean(run.budget / 2),
        "ratio_final": safe_ratio(fm, mean_std(base.final)[0]) if base else None,
        "q_thr_mean": qm,
        "q_thr_reached": reached,
        "ratio_q_thr": safe_ratio(qm, bm),
    }


def queries_to_level(run: Run, levels: list[float]) -> tuple[float | None, int]:
    """Mean queries for ``run`` to reach per-seed ``levels`` (None unless all seeds do)."""
    qs = [queries_to(h, lv) for h, lv in zip(run.history, levels)] if not run.diverged else []
    got = sum(q is not None for q in qs)
    if not qs or got < len(qs):
        return None, got
    return statistics.fmean(qs), got  # type: ignore[arg-type]


# ---------------------------------------------------------------------- output
def make_console() -> Console:
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "170"))
    return Console(width=width, highlight=False)


def table1(con: Console, runs: dict[tuple, Run], info: dict[tuple, dict], args) -> list[dict]:
    rows_out = []
    for fname in args.functions:
        for d in args.dims:
            if (fname, d) not in info:
                continue
            base = runs.get((fname, d) + BASELINE)
            frac = info[(fname, d)]["threshold_fraction"]
            f0m = statistics.fmean(base.f0) if base else float("nan")
            how = (
                f"per seed, the baseline's loss after Q/2 queries; mean gap fraction {frac:.3f}"
                if args.threshold == "auto"
                else f"f* + {frac:.3f} (f0 - f*)"
            )
            t = Table(
                title=f"Table 1. {fname}, d={d:,}: budget Q={args.budget:,} queries/problem, "
                f"{args.seeds} seeds, K={args.samples}; mean initial loss {f0m:.4g}; "
                f"threshold: {how}",
                box=box.SIMPLE_HEAD,
                title_justify="left",
                pad_edge=False,
            )
            for col in (
                "rule",
                "estimator",
                "lr",
                "loss@Q/4",
                "loss@Q/2",
                "final loss",
                "vs base",
                "queries to thr",
                "vs base",
                "steps",
            ):
                t.add_column(col, justify="left" if col in ("rule", "estimator") else "right")
            for rule, est in args.combos:
                run = runs.get((fname, d, rule, est))
                if run is None:
                    continue
                s = summary(run, base)
                qtxt = (
                    f"{s['q_thr_mean']:,.0f}"
                    if s["q_thr_mean"] is not None
                    else f">{args.budget:,} ({s['q_thr_reached']}/{run.seeds})"
                )
                final = (
                    "diverged" if run.diverged else f"{s['final_mean']:.4g} ± {s['final_std']:.2g}"
                )
                mark = " *" if (rule, est) == BASELINE else ""
                t.add_row(
                    rule + mark,
                    est + (" (paper)" if PAPER_DEFAULT[rule] == est else ""),
                    f"{run.lr:.3g}",
                    fmt(s["loss_q4"], 4),
                    fmt(s["loss_q2"], 4),
                    final,
                    fmt_ratio(s["ratio_final"]),
                    qtxt,
                    fmt_ratio(s["ratio_q_thr"]),
                    str(run.steps[0]) if run.steps else "-",
                )
                rows_out.append(
                    {
                        "function": fname,
                        "dim": d,
                        "rule": rule,
                        "estimator": est,
                        "lr": run.lr,
                        **s,
                        "threshold_fraction": frac,
                    }
                )
            con.print(t)
            con.print(
                "  * baseline (ZO-SGD + Gaussian). 'vs base' = this / baseline (final: "
                "ratio of mean losses; queries: ratio of mean queries to threshold). "
                "'>Q (k/n)': only k of n seeds reached the threshold.\n"
            )
    return rows_out


def table2(con: Console, runs: dict[tuple, Run], var_rows: list[dict], args) -> dict[str, Any]:
    claims: dict[str, Any] = {"a": [], "b": [], "c": []}
    # (a) LIZO vs ZO-SGD
    t = Table(
        title="Table 2a. Claim: LIZO reaches a loss with fewer queries than ZO-SGD",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
    )
    for col in (
        "function",
        "d",
        "method",
        "final loss",
        "q to thr",
        "ratio vs zo_sgd+gauss",
        "ratio vs best zo_sgd",
        "q to base final",
        "frac of Q",
    ):
        t.add_column(col, justify="right")
    for fname in args.functions:
        for d in args.dims:
            base = runs.get((fname, d) + BASELINE)
            if base is None:
                continue
            sgd = [runs[k] for k in runs if k[:3] == (fname, d, "zo_sgd") and k[3] != "lizo"]
            best_sgd = min(
                (r for r in sgd if not r.diverged),
                key=lambda r: statistics.fmean(r.final),
                default=None,
            )
            best_q = summary(best_sgd, base)["q_thr_mean"] if best_sgd else None
            for key in ((fname, d, "lizo", "lizo"), (fname, d, "zo_sgd", "lizo")):
                run = runs.get(key)
                if run is None:
                    continue
                s = summary(run, base)
                qb, got = queries_to_level(run, base.final)
                name = "lizo+lizo (reuse)" if key[2] == "lizo" else "zo_sgd+lizo (no reuse)"
                entry = {
                    "function": fname,
                    "dim": d,
                    "method": name,
                    "final": s["final_mean"],
                    "q_thr": s["q_thr_mean"],
                    "ratio_vs_baseline": s["ratio_q_thr"],
                    "best_zo_sgd": (label(best_sgd.rule, best_sgd.estimator) if best_sgd else None),
                    "ratio_vs_best_zo_sgd": safe_ratio(s["q_thr_mean"], best_q),
                    "q_to_baseline_final": qb,
                    "reached_baseline_final": got,
                }
                claims["a"].append(entry)
                t.add_row(
                    fname,
                    f"{d:,}",
                    name,
                    fmt(s["final_mean"], 4),
                    fmt(s["q_thr_mean"], 5),
                    fmt_ratio(s["ratio_q_thr"]),
                    f"{fmt_ratio(entry['ratio_vs_best_zo_sgd'])} ({entry['best_zo_sgd']})",
                    f"{qb:,.0f}" if qb is not None else f"not reached ({got}/{run.seeds})",
                    fmt_ratio(safe_ratio(qb, float(args.budget))),
                )
    con.print(t)
    con.print(
        "  q to thr: mean queries to the Table 1 threshold; ratio < 1 means LIZO needs "
        "fewer. "
        "'q to base final': queries LIZO needs to reach, per seed, the final loss of "
        "ZO-SGD+Gaussian after the full budget Q ('frac of Q' < 1: fewer queries).\n"
    )

    # (b) R-AdaZO vs ZO-AdaMM
    t = Table(
        title="Table 2b. Claim: R-AdaZO converges faster than ZO-AdaMM "
        "(same estimator, same budget, each with its own tuned lr)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
    )
    for col in (
        "function",
        "d",
        "estimator",
        "adamm final",
        "radazo final",
        "final ratio R/A",
        "adamm q thr",
        "radazo q thr",
        "q thr ratio R/A",
        "R q to A final (frac Q)",
    ):
        t.add_column(col, justify="right")
    for fname in args.functions:
        for d in args.dims:
            base = runs.get((fname, d) + BASELINE)
            for est in ("sphere", "gaussian", "dap"):
                a, r = runs.get((fname, d, "zo_adamm", est)), runs.get((fname, d, "radazo", est))
                if a is None or r is None or base is None:
                    continue
                sa, sr = summary(a, base), summary(r, base)
                qra, got = queries_to_level(r, a.final) if not a.diverged else (None, 0)
                entry = {
                    "function": fname,
                    "dim": d,
                    "estimator": est,
                    "adamm_final": sa["final_mean"],
                    "radazo_final": sr["final_mean"],
                    "final_ratio": safe_ratio(sr["final_mean"], sa["final_mean"]),
                    "adamm_q_thr": sa["q_thr_mean"],
                    "radazo_q_thr": sr["q_thr_mean"],
                    "q_thr_ratio": safe_ratio(sr["q_thr_mean"], sa["q_thr_mean"]),
                    "radazo_q_to_adamm_final": qra,
                    "reached": got,
                    "adamm_lr": a.lr,
                    "radazo_lr": r.lr,
                }
                claims["b"].append(entry)
                t.add_row(
                    fname,
                    f"{d:,}",
                    est,
                    fmt(sa["final_mean"], 4),
                    fmt(sr["final_mean"], 4),
                    fmt_ratio(entry["final_ratio"]),
                    fmt(sa["q_thr_mean"], 5),
                    fmt(sr["q_thr_mean"], 5),
                    fmt_ratio(entry["q_thr_ratio"]),
                    f"{qra:,.0f} ({qra / args.budget:.2f})"
                    if qra is not None
                    else f"not reached ({got}/{r.seeds})",
                )
    con.print(t)
    con.print(
        "  R/A < 1 favours R-AdaZO. Last column: queries R-AdaZO needs to reach ZO-AdaMM's "
        "final loss (per seed), and that as a fraction of Q.\n"
    )

    # (c) estimator variance
    if var_rows:
        t = Table(
            title="Table 2c. Claim: DAP has lower estimator variance than Gaussian "
            f"directions. float64, probe radius {args.var_mu:g}*sqrt(d) for all, "
            "K directions = K+1 "
            "queries each (DAP: K/2 pilot + K/2 aligned), start point + "
            f"{args.var_points} random N(0,I) points",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            pad_edge=False,
        )
        for col in (
            "function",
            "d",
            "K",
            "estimator",
            "NMSE (as is)",
            "± se",
            "NMSE/gauss",
            "cos",
            "cos/gauss",
            "NMSE rescaled",
            "E<g^,g>/|g|^2",
        ):
            t.add_column(col, justify="right")
        for r in var_rows:
            g = next(
                (
                    x
                    for x in var_rows
                    if x["function"] == r["function"]
                    and x["dim"] == r["dim"]
                    and x["K"] == r["K"]
                    and x["estimator"] == "gaussian"
                ),
                None,
            )
            rn = safe_ratio(r["nmse"], g["nmse"]) if g else None
            rc = safe_ratio(r["cos"], g["cos"]) if g else None
            r["nmse_ratio_vs_gaussian"], r["cos_ratio_vs_gaussian"] = rn, rc
            if r["estimator"] == "dap" and g:
                se = rn * math.hypot(r["nmse_se"] / r["nmse"], g["nmse_se"] / g["nmse"])
                claims["c"].append(
                    {
                        "function": r["function"],
                        "dim": r["dim"],
                        "K": r["K"],
                        "nmse_ratio": rn,
                        "nmse_ratio_se": se,
                        "cos_ratio": rc,
                        "dap_cos": r["cos"],
                        "gaussian_cos": g["cos"],
                    }
                )
            t.add_row(
                r["function"],
                f"{r['dim']:,}",
                str(r["K"]),
                r["estimator"],
                f"{r['nmse']:.4g}",
                f"{r['nmse_se']:.2g}",
                fmt_ratio(rn) if rn else "-",
                f"{r['cos']:.4f}",
                f"{rc:.3f}" if rc else "-",
                f"{r['nmse_rescaled']:.4f}",
                f"{r['bias_scale']:.3g}",
            )
        con.print(t)
        con.print(
            "  NMSE = E||g^ - grad||^2/||grad||^2 of the estimator output as is (all "
            "unbiased-"
            "scaled except lizo, whose E[g^] = (K/d) grad: see the last column); cos = mean "
            "cosine to the autograd gradient (scale-free); NMSE rescaled = min_c "
            "E||c g^ - grad||^2/||grad||^2 (scale-free). Theory for unbiased estimators: "
            "NMSE = (d+1)/K Gaussian, (d-1)/K sphere/Rademacher, d/K-1 coordinate "
            "(mu -> 0).\n"
        )
    return claims


def table3(con: Console, rows: list[dict], args) -> None:
    t = Table(
        title="Table 3. Time per query: whole optimisation (wall / queries, fastest of "
        f"{args.timing_repeats} runs of {min(args.budget, args.timing_budget):,} "
        "queries "
        "per problem) vs a bare batched evaluation per point at the same batch size "
        "(seeds x queries per step; fastest of 50 calls)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
    )
    for col in (
        "function",
        "d",
        "rule",
        "estimator",
        "batch",
        "wall s",
        "queries",
        "µs/query",
        "bare µs/point",
        "overhead x",
        "µs/query (eval run)",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["function"],
            f"{r['dim']:,}",
            r["rule"],
            r["estimator"],
            str(r["batch"]),
            f"{r['wall_s_min']:.2f}",
            f"{r['queries']:,}",
            f"{r['us_per_query']:.1f}",
            f"{r['bare_us_per_point']:.2f}",
            f"{r['overhead']:.1f}",
            f"{r['eval_run_us_per_query']:.1f}",
        )
    con.print(t)
    con.print(
        "  overhead x = (wall time / queries) / (bare time per point): direction sampling, "
        "estimator and update arithmetic, the ledger and minimize's bookkeeping, per query. "
        "Last column: the same from the single Table 1 run (inflated by any other load on "
        "the machine).\n"
    )


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
