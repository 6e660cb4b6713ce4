"""benchmarks/_common.py plumbing, and benchmarks/attack.py taking rules and defaults from the
library (so a benchmark's "zoattack run default" is what `zoattack run` really does)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from zoattack.jobs.attack import AttackSpec
from zoattack.norms import NORMS
from zoattack.optim import OPTIMIZERS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str, file: str) -> ModuleType:
    # Loaded by path under fixed names: putting benchmarks/ on sys.path would let its
    # attack/batch/remote scripts shadow other imports for the whole test session.
    spec = importlib.util.spec_from_file_location(name, BENCH / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_common = _load("_common", "_common.py")  # the name the scripts import it by
_load("_attack_runners", "_attack_runners.py")  # attack.py's parts, by the names it imports
_load("_attack_report", "_attack_report.py")
bench_attack = _load("bench_attack", "attack.py")


def test_write_csv_takes_every_key_in_first_seen_order(tmp_path):
    rows = [{"a": 1, "b": 2}, {"b": 3, "c": 4}]
    path = _common.write_csv(tmp_path / "r.csv", rows)
    with path.open() as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["a", "b", "c"]
    assert got[1] == {"a": "", "b": "3", "c": "4"}
    path = _common.write_csv(tmp_path / "s.csv", rows, ["c", "a"])
    assert path.read_text().splitlines()[0] == "c,a"


def test_write_json_and_metadata(tmp_path):
    meta = _common.metadata(seed=3)
    path = _common.write_json(tmp_path / "m.json", {"meta": meta, "where": tmp_path})
    back = json.loads(path.read_text())
    assert back["meta"]["seed"] == 3 and back["where"] == str(tmp_path)
    assert back["meta"]["versions"]["torch"] == torch.__version__
    assert back["meta"]["machine"]["torch_threads"] == torch.get_num_threads()
    assert back["meta"]["date"].endswith("+00:00")


def test_markdown_table_aligns_columns():
    lines = _common.markdown_table(["x", "long name"], [["1", "2"], ["333", "4"]])
    assert lines[0] == "| x   | long name |"
    assert lines[1] == "|-----|-----------|"
    assert lines[3] == "| 333 | 4         |"
    assert len({len(ln) for ln in lines}) == 1


def test_timed_reduces_repeats():
    calls = []
    assert _common.timed(lambda: calls.append(1), repeats=4, warmup=2, reduce=len) == 4
    assert len(calls) == 6


class Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.002)
        return x.sum(1, keepdim=True)


def test_meter_counts_rows_and_rates_on_its_own(one_thread):
    meter = _common.Meter(Slow())
    for b in (3, 5, 3):
        meter(torch.zeros(b, 2))
    assert (meter.calls, meter.rows, meter.batches) == (3, 11, {3: 2, 5: 1})
    assert meter.mean_batch == pytest.approx(11 / 3)
    assert 0 < meter.rate() <= 11 / 0.006  # at least 2 ms per call were spent in the model
    meter.reset()
    assert meter.rows == 0 and meter.rate() == 0


def test_benchmark_rules_come_from_the_registry():
    search = set(OPTIMIZERS.names(search=True))
    assert set(bench_attack.SEARCH_RULES) == search
    assert set(bench_attack.GRADIENT_RULES) == {e.name for e in OPTIMIZERS} - search


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("rule", [e.name for e in OPTIMIZERS if not e.flags.get("search")])
def test_benchmark_default_config_is_what_zoattack_run_resolves(rule, norm):
    eps = 0.05 if norm == "linf" else 1.0
    cfg = bench_attack.Config.cli_default(rule, norm, eps)
    spec = AttackSpec(optimizer=rule, norm=norm, eps=eps).resolved()
    assert (cfg.subspace, cfg.estimator, cfg.momentum, cfg.difference) == (
        spec.subspace,
        spec.estimator,
        spec.momentum,
        spec.difference,
    )
    assert cfg.mu == spec.mu
    assert bench_attack.lr_of(rule, norm, eps, cfg) == spec.lr
    built = bench_attack.build_rule(rule, norm, eps, 100, cfg)
    want = spec.make_rule()
    assert type(built) is type(want) and built.lr == want.lr
    assert built.estimator is not None and want.estimator is not None
    assert (built.estimator.name, built.estimator.mu) == (want.estimator.name, want.estimator.mu)
