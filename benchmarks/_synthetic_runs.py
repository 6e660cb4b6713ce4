"""Part of benchmarks/synthetic.py: the compared (rule, estimator) pairs, single runs, lr tuning,
estimator variance and the analysis of runs. Run the benchmark with
``python benchmarks/synthetic.py --quick`` (see that file).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from _common import timed

from zoattack import (
    BlackBox,
    FunctionObjective,
    ZOAttackError,
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
