"""Summaries and files for attack results (the CLI's table, --json and --out)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from zoattack.attacks.base import AttackResult
from zoattack.blackbox import COUNTING_RULE

CSV_FIELDS = ("index", "label", "initial_prediction", "final_prediction", "success", "queries",
              "linf", "l2", "stop_reason")


def summarize(result: AttackResult, *, wall_seconds: float, total_queries: int) -> dict[str, Any]:
    """Success rate over images the model got right at the start; query statistics over
    successes and over all attacked images; median distortion over successes."""
    attacked = result.clean_correct
    n_att = int(attacked.sum())
    succ = result.success
    q_succ = result.queries[succ].double()
    q_att = result.queries[attacked].double()

    def stat(t: torch.Tensor, fn: str) -> float | None:
        return None if t.numel() == 0 else round(float(getattr(t, fn)()), 3)

    return {
        "images": len(result.label),
        "initially_correct": n_att,
        "skipped_misclassified": len(result.label) - n_att,
        "successes": int(succ.sum()),
        "success_rate": round(int(succ.sum()) / n_att, 4) if n_att else None,
        "mean_queries_success": stat(q_succ, "mean"),
        "median_queries_success": stat(q_succ, "median"),
        "mean_queries_all": stat(q_att, "mean"),
        "median_linf_success": stat(result.linf[succ], "median"),
        "median_l2_success": stat(result.l2[succ], "median"),
        "wall_seconds": round(wall_seconds, 3),
        "scored_inputs": total_queries,
        "scored_inputs_per_second": round(total_queries / max(wall_seconds, 1e-9), 1),
        "counting_rule": COUNTING_RULE + "; the clean check and every iterate check count; "
                         "success is over initially-correct images",
    }


def per_image_rows(result: AttackResult) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(result.label)):
        rows.append({
            "index": i, "label": int(result.label[i]),
            "initial_prediction": int(result.clean_pred[i]),
            "final_prediction": int(result.final_pred[i]),
            "success": int(result.success[i]), "queries": int(result.queries[i]),
            "linf": f"{float(result.linf[i]):.6f}", "l2": f"{float(result.l2[i]):.6f}",
            "stop_reason": result.stop_reason[i],
        })
    return rows


def write_outputs(out_dir: Path, result: AttackResult, summary: dict[str, Any],
                  settings: dict[str, Any]) -> list[Path]:
    """Write ``per_image.csv`` and ``summary.json`` (settings + summary) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "per_image.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(per_image_rows(result))
    json_path = out_dir / "summary.json"
    json_path.write_text(json.dumps({"settings": settings, "summary": summary}, indent=2))
    return [csv_path, json_path]
