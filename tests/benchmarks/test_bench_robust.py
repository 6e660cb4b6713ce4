"""benchmarks/robust.py: its verdicts follow the issue's targets, --offset runs pool exactly with
--merge, and a tiny run on the shipped robust victim measures what it says."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    # robust.py imports `_common` and `attack` as the script would; both are put in
    # sys.modules only while it loads, so benchmarks/attack.py never shadows another `attack`.
    parts = ("_common", "_attack_runners", "_attack_report", "attack")
    saved = {k: sys.modules.get(k) for k in parts}
    try:
        for name in (*parts, "bench_robust"):
            spec = importlib.util.spec_from_file_location(
                name, BENCH / {"bench_robust": "robust.py"}.get(name, f"{name}.py")
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


robust = _load()


def _row(method: str, kind: str, pct: float, budget: int = 1000, n: int = 20) -> dict:
    import torch

    s = round(pct * n / 100)
    ok = torch.tensor([1] * s + [0] * (n - s), dtype=torch.bool)
    cost = torch.arange(1, n + 1)
    return robust.row("v", "linf", 0.1, budget, method, kind, "", ok, cost, 1.0)


def test_verdicts_apply_the_issue_targets():
    rows = [
        _row("pgd", "white-box", 30, 10_000),
        _row("square", "zoattack", 25, 10_000),
        _row("zo_sgd", "zoattack", 20, 10_000),
        _row("torchattacks_square", "peer", 25, 10_000),
    ]
    v = robust.verdicts(rows)
    assert any(line.startswith("[FAIL] best black-box within 3") and "(-5.0)" in line for line in v)
    assert any(line.startswith("[FAIL] best-worst") and "= 5.0" in line for line in v)
    assert not any("torchattacks Square + 2" in line for line in v)  # a 1,000-query target
    rows = [
        _row("pgd", "white-box", 30),
        _row("square", "zoattack", 30),
        _row("zo_sgd", "zoattack", 10),
        _row("torchattacks_square", "peer", 25),
    ]
    v = robust.verdicts(rows)
    assert any(line.startswith("[PASS] best >= torchattacks Square + 2") for line in v)
    assert any(line.startswith("[PASS] best-worst") and "= 20.0" in line for line in v)
    table = "\n".join(robust.table(rows))
    assert "pgd (white-box)" in table and "grad" in table and "+5.0" in table


def test_merge_pools_disjoint_runs_exactly(tmp_path):
    a, b = _row("square", "zoattack", 50, n=4), _row("square", "zoattack", 0, n=2)
    for name, r in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": [r]}))
    (m,) = robust.merge([tmp_path / "a.json", tmp_path / "b.json"])
    assert m["images"] == 6 and m["successes"] == 2 and m["wall_s"] == 2.0
    # The successes cost 1 and 2 queries; torch's median (benchmarks/attack.py's too) takes
    # the lower middle value.
    assert m["median_cost"] == 1.0
    assert m["per_image_success"] == [1, 1, 0, 0, 0, 0]


def test_tiny_run_on_the_shipped_robust_victim(tmp_path, one_thread):
    args = ["--victims", "small_cnn_robust", "--norms", "linf", "--budgets", "30"]
    args += ["--images", "3", "--methods", "sign", "zo_signsgd", "--no-peer"]
    args += ["--pgd-steps", "2", "--pgd-restarts", "1", "--out", str(tmp_path)]
    assert robust.main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["pgd", "sign", "zo_signsgd"]
    for r in rows:
        assert r["images"] == 3 and len(r["per_image_cost"]) == 3
        if r["kind"] == "white-box":
            assert r["cost_unit"] == "gradient calls"
            assert all(1 <= c <= 3 for c in r["per_image_cost"])  # 2 steps + the final check
        else:
            assert all(1 <= c <= 30 for c in r["per_image_cost"])
    assert (tmp_path / "table.md").read_text().startswith("| victim")
