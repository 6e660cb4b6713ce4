"""Part of benchmarks/attack.py: result rows, their Markdown table and the verdicts against the
targets. Run the benchmark with ``python benchmarks/attack.py --quick`` (see that file).
"""

from __future__ import annotations

import math

from _attack_runners import REFERENCE, Outcome
from _common import (
    RawProfile,
    fmt,
    markdown_table,
)


# --------------------------------------------------------------------------- rows
def make_row(
    victim: str,
    norm: str,
    eps: float,
    budget: int,
    method: str,
    kind: str,
    config: str,
    out: Outcome,
    profile: RawProfile,
) -> dict:
    n = len(out.success)
    s = int(out.success.sum())
    q = out.queries[out.success].double()
    m = out.meter
    mean_batch = m.mean_batch
    rate = m.rows / max(out.wall, 1e-9)
    # The victim's own rate on this attack's calls, timed inside the run (the same batches,
    # the same moment, so CPU contention from other jobs hits both sides alike) ...
    raw = m.rate()
    # ... and a bare re-run of the same sequence of batch sizes afterwards (contention-prone).
    bare = m.rows / max(profile.seconds_for(m.batches), 1e-12)
    return {
        "victim": victim,
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "method": method,
        "kind": kind,
        "config": config,
        "status": "ok",
        "images": n,
        "successes": s,
        "success_rate": s / n if n else None,
        "mean_queries": float(q.mean()) if s else None,
        "median_queries": float(q.median()) if s else None,
        "wall_s": out.wall,
        "wall_per_success_s": out.wall / s if s else None,
        "scored_inputs": m.rows,
        "model_calls": m.calls,
        "mean_batch": mean_batch,
        "inputs_per_s": rate,
        "raw_inputs_per_s": raw,
        "rate_vs_raw": rate / raw,
        "bare_inputs_per_s": bare,
        "rate_vs_bare": rate / bare,
        "batch_max": max(m.batches, default=0),
        "notes": "; ".join(out.notes),
        **{k: v for k, v in out.extra.items() if not isinstance(v, dict)},
    }


def skipped_row(victim, norm, eps, budget, method, kind, why) -> dict:
    return {
        "victim": victim,
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "method": method,
        "kind": kind,
        "config": "",
        "status": f"skipped: {why}",
    }


def add_ratios(rows: list[dict]) -> None:
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r["method"] == REFERENCE and r["status"] == "ok":
            groups[(r["victim"], r["norm"], r["budget"], r["images"])] = r
    for r in rows:
        if r["status"] != "ok":
            continue
        ref = groups.get((r["victim"], r["norm"], r["budget"], r["images"]))
        if ref is None:
            continue
        r["d_success_pts"] = 100 * (r["success_rate"] - ref["success_rate"])
        if r["median_queries"] is not None and ref["median_queries"]:
            r["median_q_ratio"] = r["median_queries"] / ref["median_queries"]
        r["wall_ratio"] = r["wall_s"] / ref["wall_s"]
        if r["wall_per_success_s"] is not None and ref["wall_per_success_s"]:
            r["wall_per_success_ratio"] = r["wall_per_success_s"] / ref["wall_per_success_s"]


COLUMNS = [
    ("method", "method", None),
    ("config", "config", None),
    ("n", "images", None),
    ("succ%", "success_rate", "pct"),
    ("meanQ", "mean_queries", ".0f"),
    ("medQ", "median_queries", ".0f"),
    ("wall s", "wall_s", ".1f"),
    ("s/succ", "wall_per_success_s", ".3f"),
    ("in/s", "inputs_per_s", ".0f"),
    ("raw/s@b", "raw", None),
    ("rate/raw", "rate_vs_raw", ".2f"),
    ("dSucc pts", "d_success_pts", "+.0f"),
    ("medQ x", "median_q_ratio", ".2f"),
    ("wall x", "wall_ratio", ".2f"),
    ("s/succ x", "wall_per_success_ratio", ".2f"),
]


def table(rows: list[dict]) -> str:
    lines = []
    keys = sorted(
        {(r["victim"], r["norm"], r["budget"]) for r in rows}, key=lambda k: (k[0], k[1], k[2])
    )
    for victim, norm, budget in keys:
        group = [r for r in rows if (r["victim"], r["norm"], r["budget"]) == (victim, norm, budget)]
        eps = group[0]["eps"]
        lines.append(
            f"\n### {victim}  {norm} eps={eps:g}  budget {budget:,}  (ratios vs {REFERENCE})"
        )
        cells: list[list[str]] = []
        for r in group:
            if r["status"] != "ok":
                cells.append([r["method"], r["status"]] + [""] * (len(COLUMNS) - 2))
                continue
            row = []
            for _, key, spec in COLUMNS:
                if key == "raw":
                    row.append(f"{r['raw_inputs_per_s']:.0f}@{r['mean_batch']:.0f}")
                elif spec == "pct":
                    row.append(f"{100 * r[key]:.0f}" if r.get(key) is not None else "-")
                elif spec is None:
                    row.append(str(r.get(key, "")))
                else:
                    row.append(fmt(r.get(key), spec))
            cells.append(row)
        lines += markdown_table([c[0] for c in COLUMNS], cells)
        for r in group:
            if r.get("notes"):
                lines.append(f"  note [{r['method']}]: {r['notes']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- verdicts
def verdicts(rows: list[dict]) -> list[str]:
    out = []
    ok = [r for r in rows if r["status"] == "ok"]
    keys = sorted({(r["victim"], r["norm"], r["budget"]) for r in ok})

    def get(k, method):
        return next(
            (r for r in ok if (r["victim"], r["norm"], r["budget"]) == k and r["method"] == method),
            None,
        )

    def better(a, b) -> bool:  # success first, then mean queries over successes
        if a["successes"] != b["successes"]:
            return a["successes"] > b["successes"]
        return (a["mean_queries"] or math.inf) < (b["mean_queries"] or math.inf)

    for k in keys:
        tag = f"{k[0]} {k[1]} @{k[2]}"
        ref = get(k, REFERENCE)
        zo = [
            r for r in ok if (r["victim"], r["norm"], r["budget"]) == k and r["kind"] == "zoattack"
        ]
        if ref and zo:
            # PASS if any zoattack rule meets both conditions; otherwise show the best one.
            qual = [
                r
                for r in zo
                if r["d_success_pts"] >= 2 and (r.get("median_q_ratio") or math.inf) <= 0.5
            ]
            best = max(
                qual or zo, key=lambda r: (r["success_rate"], -(r["median_queries"] or math.inf))
            )
            hit = bool(qual)
            out.append(
                f"[{'PASS' if hit else 'FAIL'}] T1 best zoattack beats Square, {tag}: "
                f"{best['method']} {100 * best['success_rate']:.0f}% "
                f"({best['d_success_pts']:+.0f} pts, need >= +2), median "
                f"{fmt(best['median_queries'], '.0f')} vs "
                f"{fmt(ref['median_queries'], '.0f')} "
                f"(x{fmt(best.get('median_q_ratio'), '.2f')}, need <= 0.50)"
            )
        if ref and k[2] == 1000:
            for m in ("lizo", "radazo"):
                r = get(k, m)
                if r:
                    hit = r["d_success_pts"] >= -5
                    out.append(
                        f"[{'PASS' if hit else 'FAIL'}] T2 {m} within 5 pts of Square "
                        f"@1k, {tag}: {100 * r['success_rate']:.0f}% vs "
                        f"{100 * ref['success_rate']:.0f}% ({r['d_success_pts']:+.0f})"
                    )
        r = get(k, "square")
        if ref and r:
            mq = r.get("median_q_ratio")
            hit = abs(r["d_success_pts"]) <= 2 and mq is not None and abs(mq - 1) <= 0.10
            out.append(
                f"[{'PASS' if hit else 'FAIL'}] T3 zoattack square matches Square, {tag}: "
                f"{r['d_success_pts']:+.0f} pts, median x{fmt(mq, '.2f')}"
            )
        for m in ("lizo", "radazo"):
            r = get(k, m)
            for base in ("zo_sgd", "zo_adamm"):
                b = get(k, base)
                if r and b:
                    out.append(
                        f"[{'PASS' if better(r, b) else 'FAIL'}] T4 {m} beats {base}, "
                        f"{tag}: {100 * r['success_rate']:.0f}% / mean "
                        f"{fmt(r['mean_queries'], '.0f')} vs "
                        f"{100 * b['success_rate']:.0f}% / {fmt(b['mean_queries'], '.0f')}"
                    )
        for r in zo:
            hit = r["rate_vs_raw"] >= 0.9
            out.append(
                f"[{'PASS' if hit else 'FAIL'}] T5 throughput {r['method']}, {tag}: "
                f"{r['inputs_per_s']:.0f}/s = {r['rate_vs_raw']:.2f} x raw "
                f"{r['raw_inputs_per_s']:.0f}/s, the victim's own rate on the same calls "
                f"(mean batch {r['mean_batch']:.0f}; bare re-run {r['bare_inputs_per_s']:.0f}/s)"
            )
        if ref and zo:
            for r in zo:
                x = r.get("wall_per_success_ratio")
                if x is not None:
                    out.append(
                        f"[{'PASS' if x <= 1 else 'FAIL'}] T6 wall/success "
                        f"{r['method']}, {tag}: {r['wall_per_success_s']:.3f}s vs "
                        f"{ref['wall_per_success_s']:.3f}s (x{x:.2f})"
                    )
    return out
