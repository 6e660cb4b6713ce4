"""Hard-label jobs in batch plans: grids of --attack, their keys and labels, the rows' store
column, the report's distance column, an older store gaining the column, and --executor ray
giving the local executor's rows."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from zoattack.batch import LocalExecutor, RayExecutor, ResultStore, load_plan, run_batch
from zoattack.batch.plan import job_key
from zoattack.cli.main import app
from zoattack.jobs.attack import AttackSpec

HARD = """labels_only = true
norm = "linf"
[grid]
attack = ["hsja", "rays"]
seed = [0, 1]
[[job]]
attack = "opt"
optimizer = "lizo"
norm = "l2"
"""


@pytest.fixture(scope="module")
def hard_plan(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("hardplan")
    body = tiny.replace("budget = 40", "budget = 30").replace("images = 6", "images = 4")
    (folder / "plan.toml").write_text(body + HARD)
    return load_plan(folder / "plan.toml")


@pytest.fixture(scope="module")
def local_run(hard_plan, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hardlocal")
    with ResultStore(folder) as store:
        outcome = run_batch(hard_plan, store, LocalExecutor())
        assert outcome.finished == 5 and not outcome.failed
        return folder, store.rows()


def test_plan_expands_hard_label_grids(hard_plan):
    labels = sorted(j.label for j in hard_plan.jobs)
    assert labels == ["hsja", "hsja", "opt:lizo+lizo", "rays", "rays"]
    assert all(j.spec.attack and j.spec.labels_only for j in hard_plan.jobs)
    assert len({j.key for j in hard_plan.jobs}) == 5


def test_score_job_keys_do_not_change_with_the_new_settings():
    import hashlib

    spec = AttackSpec(device="cpu").resolved()
    old = {
        k: v
        for k, v in spec.as_dict().items()
        if k
        not in (
            "device",
            "max_batch",
            "attack",
            "labels_only",
            "init_from",
            # issue 12's generic tricks, added later: None (off) keeps the old key
            "start",
            "restart",
            "mu_decay",
            "lr_decay",
            # the transfer prior's fields: unset keeps the pre-prior key (plan.LEGACY_KEY_SCHEMES)
            "prior",
            "prior_weights",
            # issue 22: an untrained victim on purpose, --indices; unset keeps the old key
            "random_init",
            "indices",
            # surrogate ensembles (issue 25): unset keeps the key of plans without them
            "surrogates",
            "surrogate_weights",
        )
    }
    blob = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert job_key(spec) == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_hard_label_rows_and_report(local_run):
    folder, rows = local_run
    assert len(rows) == 5 * 4
    for r in rows:
        assert r["queries"] <= 30
        assert (r["queries_to_eps"] > 0) == bool(r["success"])
    res = CliRunner().invoke(app, ["report", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    jobs = json.loads(res.stdout)["jobs"]
    assert all("median_distance_at_budget" in j for j in jobs)
    table = CliRunner().invoke(app, ["report", str(folder)])
    assert table.exit_code == 0 and "dist@budget" in table.output


def test_an_older_store_gains_the_new_row_column(tmp_path):
    db = tmp_path / "results.sqlite"
    with ResultStore(tmp_path):
        pass
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE rows DROP COLUMN queries_to_eps")  # as made before the column
    conn.commit()
    conn.close()
    with ResultStore(tmp_path) as store:
        cols = [r[1] for r in store.conn.execute("PRAGMA table_info(rows)")]
        assert "queries_to_eps" in cols


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
    yield ray
    if started:
        ray.shutdown()


def test_ray_executor_runs_hard_label_jobs_like_the_local_one(
    ray_local, hard_plan, local_run, tmp_path
):
    _, reference = local_run
    with ResultStore(tmp_path) as store:
        outcome = run_batch(hard_plan, store, RayExecutor())
        assert outcome.finished == 5 and not outcome.failed
        assert store.rows() == reference
