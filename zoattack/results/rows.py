"""The per-image row of an attack: its schema, how a result becomes rows, and their summary.

`zoattack run` (per_image.csv), `zoattack batch` (the SQLite store's ``rows`` table) and
`zoattack report` all use these, so a job's numbers are the same wherever they are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.base import AttackResult
from zoattack.blackbox import COUNTING_RULE

CSV_FIELDS = (
    "index",
    "label",
    "initial_prediction",
    "final_prediction",
    "success",
    "queries",
    "linf",
    "l2",
    "stop_reason",
)
ROW_COUNTING_RULE = (
    COUNTING_RULE + "; the clean check and every iterate check count; "
    "success is over initially-correct images"
)


def rows_of(result: AttackResult, offset: int, keep: Tensor | None = None) -> list[dict[str, Any]]:
    """Per-image rows (dataset index = ``offset`` + position), optionally only where ``keep``."""
    rows = []
    for i in range(len(result.label)):
        if keep is not None and not bool(keep[i]):
            continue
        rows.append(
            {
                "index": offset + i,
                "label": int(result.label[i]),
                "initial_prediction": int(result.clean_pred[i]),
                "final_prediction": int(result.final_pred[i]),
                "success": int(result.success[i]),
                "queries": int(result.queries[i]),
                "linf": round(float(result.linf[i]), 6),
                "l2": round(float(result.l2[i]), 6),
                "stop_reason": result.stop_reason[i],
            }
        )
    return rows


def summarize_rows(
    rows: Sequence[Mapping[str, Any]], *, wall_seconds: float, scored_inputs: int
) -> dict[str, Any]:
    """Success rate over images the model got right at the start; query statistics over
    successes and over all attacked images; median distortion over successes.

    ``scored_inputs`` and ``wall_seconds`` describe the work done (for the rate); the rest is
    computed from the rows, so a resumed run reports the whole job.
    """
    attacked = [r for r in rows if r["stop_reason"] != "misclassified"]
    succ = [r for r in attacked if int(r["success"])]

    def stat(vals: list[float], fn: str) -> float | None:
        if not vals:
            return None
        t = torch.tensor(vals, dtype=torch.float64)
        return round(float(getattr(t, fn)()), 3)

    n_att = len(attacked)
    return {
        "images": len(rows),
        "initially_correct": n_att,
        "skipped_misclassified": len(rows) - n_att,
        "successes": len(succ),
        "success_rate": round(len(succ) / n_att, 4) if n_att else None,
        "mean_queries_success": stat([float(r["queries"]) for r in succ], "mean"),
        "median_queries_success": stat([float(r["queries"]) for r in succ], "median"),
        "mean_queries_all": stat([float(r["queries"]) for r in attacked], "mean"),
        "median_linf_success": stat([float(r["linf"]) for r in succ], "median"),
        "median_l2_success": stat([float(r["l2"]) for r in succ], "median"),
        "wall_seconds": round(wall_seconds, 3),
        "scored_inputs": int(scored_inputs),
        "scored_inputs_per_second": round(scored_inputs / max(wall_seconds, 1e-9), 1)
        if scored_inputs
        else None,
        "counting_rule": ROW_COUNTING_RULE,
    }


def summarize(result: AttackResult, *, wall_seconds: float, total_queries: int) -> dict[str, Any]:
    """:func:`summarize_rows` of one in-memory result (benchmarks)."""
    return summarize_rows(
        rows_of(result, 0), wall_seconds=wall_seconds, scored_inputs=total_queries
    )


def success_curve(
    queries_of_successes: list[int], attacked: int, budget: float
) -> tuple[list[float], list[float]]:
    """Step-curve points of "fraction of attacked images fooled within q queries", q up to
    ``budget``: the one success curve of `zoattack run --save-images` and `zoattack report`."""
    q = sorted(float(v) for v in queries_of_successes)
    n = max(attacked, 1)
    xs = [0.0, *q, float(budget)]
    ys = [0.0, *[(k + 1) / n for k in range(len(q))], len(q) / n]
    return xs, ys
