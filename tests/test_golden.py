"""Golden runs: every attack x norm, a universal run, a batch plan, a defend train + certify and a
remote run give the rows, ledgers and summaries recorded in tests/golden/golden.json: every
discrete field exactly, floats within the tolerances tests/golden/golden.py gives (measured
spread between CPU kernels; golden.json is recorded on one machine and checked on any).

A change that is meant to move results re-records them (`python tests/golden/golden.py --write
--parts PART`) and says why in its commit; any other difference is a regression.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "golden"
spec = importlib.util.spec_from_file_location("golden_runs", HERE / "golden.py")
assert spec is not None and spec.loader is not None
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)
WANT = json.loads((HERE / "golden.json").read_text())


@pytest.mark.parametrize("part", list(golden.PARTS))
def test_golden(part, one_thread):
    got = golden.collect([part])[part]
    diffs = golden.compare(got, WANT[part], part)
    assert not diffs, "differs from the golden run:\n" + "\n".join(diffs[:30])


def test_golden_file_is_normalised():
    # Floats at DIGITS significant digits and CSV cells typed: what collect() gives, so the
    # file does not depend on whether a machine computed a value in float32 or float64.
    assert golden.normalise(WANT) == WANT
    rows = WANT["attacks"]["sign/linf"]["rows"]
    assert all(isinstance(r["queries"], int) and isinstance(r["l2"], float) for r in rows)


ROW = {"index": 0, "label": 3, "queries": 55, "stop_reason": "budget", "success": 0}


def run(l2s, **row):
    return {"rows": [{**ROW, **row, "l2": x, "linf": 0.1} for x in l2s], "summary": {"loss": 1.5}}


def test_compare_takes_float_drift_within_tolerance():
    want = run([0.4, 0.5, 0.6])
    assert golden.compare(want, want) == []
    # One row's distance by 10% (a signSGD flip), the mean by under 5%: kernel drift.
    assert golden.compare(run([0.44, 0.49, 0.59]), want) == []
    # A float32 value against its float64 twin, and the last CSV digit.
    got = {**run([0.400001, 0.5, 0.6]), "summary": {"loss": 1.5000000596}}
    assert golden.compare(got, want) == []


@pytest.mark.parametrize(
    "got, what",
    [
        (run([0.4, 0.5, 0.6], queries=56), "queries"),
        (run([0.4, 0.5, 0.6], success=1), "success"),
        (run([0.4, 0.5, 0.6], stop_reason="success"), "stop_reason"),
        (run([0.4, 0.5, 0.6], success=True), "success"),  # a bool is not the int 0/1
        (run([0.4, 0.5, 0.6], label=3.0), "label"),  # an integer field turned float
        (run([0.4, 0.5, 0.9]), "l2"),  # one row off by 50%
        (run([0.43, 0.53, 0.64]), "mean l2"),  # every row 6-7% up: a systematic shift
        ({**run([0.4, 0.5, 0.6]), "summary": {"loss": 1.501}}, "loss"),
        (run([0.4, 0.5]), "rows"),
        ({"rows": run([0.4, 0.5, 0.6])["rows"]}, "summary"),
    ],
)
def test_compare_flags_every_discrete_change_and_real_float_change(got, what):
    diffs = golden.compare(got, run([0.4, 0.5, 0.6]))
    assert diffs and what in diffs[0], diffs
