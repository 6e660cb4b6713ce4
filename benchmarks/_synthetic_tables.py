"""Part of benchmarks/synthetic.py: the three result tables it prints (and returns as rows).
Run the benchmark with ``python benchmarks/synthetic.py --quick`` (see that file).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from typing import Any

from _synthetic_runs import (
    BASELINE,
    PAPER_DEFAULT,
    Run,
    fmt,
    fmt_ratio,
    label,
    queries_to_level,
    safe_ratio,
    summary,
)
from rich import box
from rich.console import Console
from rich.table import Table


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
