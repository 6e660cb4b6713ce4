"""examples/plan.toml: the plan users copy first loads and names attacks as they are named now."""

from __future__ import annotations

import textwrap
from pathlib import Path

import tomllib

from zoattack.batch.plan import load_plan
from zoattack.jobs.resolve import search_rules

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plan.toml"

# The example's jobs in the older spelling (search attacks as `optimizer`), which still works.
OLD_SPELLING = """
[defaults]
model = "small_cnn"
dataset = "fashion-mnist"
images = 100
budget = 1000
chunk_size = 50
device = "cpu"

[grid]
optimizer = ["sign", "zo_signsgd", "zo_adamm"]
eps = [0.05, 0.1]
seed = [0, 1]

[[job]]
norm = "l2"
eps = 1.5
optimizer = "square"

[[job]]
model = "resnet20"
optimizer = "lizo"
"""


def _tables(data: dict) -> list[dict]:
    tables = [data.get("defaults", {})]
    grids = data.get("grid", [])
    tables += grids if isinstance(grids, list) else [grids]
    return tables + list(data.get("job", []))


def test_example_plan_names_search_attacks_with_attack_not_optimizer():
    data = tomllib.loads(EXAMPLE.read_text())
    search = set(search_rules())
    for table in _tables(data):
        values = table.get("optimizer", [])
        values = values if isinstance(values, list) else [values]
        assert not search.intersection(values), f"use attack = ... for {values} in {table}"


def test_example_plan_runs_the_same_jobs_as_the_older_spelling(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text(textwrap.dedent(OLD_SPELLING))
    new_jobs = load_plan(EXAMPLE).jobs
    assert len(new_jobs) == 14
    assert {j.key for j in new_jobs} == {j.key for j in load_plan(old).jobs}
