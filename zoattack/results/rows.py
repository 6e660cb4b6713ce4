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
from zoattack.attacks.hardlabel.oracle import DecisionResult
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
    "queries_to_eps",
)
# Columns later versions added, with the value a row written before them gets.
FIELD_DEFAULTS: dict[str, Any] = {"queries_to_eps": -1}
ROW_COUNTING_RULE = (
    COUNTING_RULE + "; the clean check and every iterate check count; "
    "success is over initially-correct images"
)
DECISION_COUNTING_RULE = (
    COUNTING_RULE + "; labels only: every membership question (is this point adversarial?) "
    "is one query: the clean check, start checks and every probe of a line or binary search "
    "count; success = the best distance is <= eps within the budget, over initially-correct "
    "images; queries to success = queries spent when the distance first fell to eps"
)


def rows_of(
    result: AttackResult | DecisionResult, offset: int, keep: Tensor | None = None
) -> list[dict[str, Any]]:
    """Per-image rows (dataset index = ``offset`` + position), optionally only where ``keep``.

    ``queries_to_eps``: a decision attack's queries when its distance first fell to eps; a
    score attack stops at success, so its queries when successful; -1 otherwise."""
    rows = []
    for i in range(len(result.label)):
        if keep is not None and not bool(keep[i]):
            continue
        if isinstance(result, DecisionResult) or result.queries_to_eps is not None:
            # (a hard-label result as `zoattack.attack` returns it carries queries_to_eps)
            assert result.queries_to_eps is not None
            q_eps = int(result.queries_to_eps[i]) if bool(result.success[i]) else -1
        else:
            q_eps = int(result.queries[i]) if bool(result.success[i]) else -1
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
                "queries_to_eps": q_eps,
            }
        )
    return rows


def queries_to_success(row: Mapping[str, Any]) -> float:
    """Queries a successful row needed: ``queries_to_eps`` (rows written before that column
    existed: ``queries``, which is the same for score attacks: they stop at success)."""
    q = row.get("queries_to_eps")
    q = -1 if q in (None, "") else int(q)
    return float(q if q >= 0 else int(row["queries"]))


def summarize_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    wall_seconds: float,
    scored_inputs: int,
    decision_norm: str | None = None,
) -> dict[str, Any]:
    """Success rate over images the model got right at the start; query statistics over
    successes (queries to success) and over all attacked images; median distortion over
    successes.

    ``scored_inputs`` and ``wall_seconds`` describe the work done (for the rate); the rest is
    computed from the rows, so a resumed run reports the whole job. ``decision_norm`` (the
    norm of a hard-label run) adds ``median_distance_at_budget``: the median final distance
    over attacked images, an image with no adversarial point counting as infinite (None when
    that median is infinite), and the hard-label counting rule.
    """
    attacked = [r for r in rows if r["stop_reason"] != "misclassified"]
    succ = [r for r in attacked if int(r["success"])]

    def stat(vals: list[float], fn: str) -> float | None:
        if not vals:
            return None
        t = torch.tensor(vals, dtype=torch.float64)
        return round(float(getattr(t, fn)()), 3)

    n_att = len(attacked)
    summary: dict[str, Any] = {
        "images": len(rows),
        "initially_correct": n_att,
        "skipped_misclassified": len(rows) - n_att,
        "successes": len(succ),
        "success_rate": round(len(succ) / n_att, 4) if n_att else None,
        "mean_queries_success": stat([queries_to_success(r) for r in succ], "mean"),
        "median_queries_success": stat([queries_to_success(r) for r in succ], "median"),
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
    if decision_norm is not None:
        dists = [float(r[decision_norm]) for r in attacked]
        med = stat(dists, "median") if dists else None
        at = list(summary).index("median_linf_success")
        items = list(summary.items())
        items.insert(at, ("median_distance_at_budget", med if med != float("inf") else None))
        items.insert(at + 1, ("no_start", sum(r["stop_reason"] == "no_start" for r in attacked)))
        summary = dict(items)
        summary["counting_rule"] = DECISION_COUNTING_RULE
    return summary


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
