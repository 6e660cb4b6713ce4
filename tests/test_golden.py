"""Golden runs: every attack x norm, a universal run, a batch plan, a defend train + certify and a
remote run give exactly the rows, ledgers and summaries recorded in tests/golden/golden.json.

A change that is meant to move results re-records them (`python tests/golden/golden.py --write`)
and says why in its commit; any other difference is a regression.
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
    want = WANT[part]
    if isinstance(got, dict) and isinstance(want, dict):
        for key in sorted(set(got) | set(want)):
            assert got.get(key) == want.get(key), f"{part}: {key} differs from the golden run"
    assert got == want
