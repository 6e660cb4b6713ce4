"""Job keys across schemes: stores written before and since the transfer prior's fields keep
their finished work (issue 12)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3

import pytest

from zoattack.batch import LocalExecutor, ResultStore, load_plan, run_batch
from zoattack.batch.plan import LEGACY_KEY_SCHEMES, adopt_stored_keys, job_key, legacy_keys
from zoattack.jobs.attack import AttackSpec

# Every field added after the first plans, all at their defaults in these specs.
LATER = (
    "attack",
    "labels_only",
    "init_from",
    "start",
    "restart",
    "mu_decay",
    "lr_decay",
    "prior",
    "prior_weights",
    "random_init",
    "indices",
    "surrogates",
    "surrogate_weights",
)


def scheme_key(spec: AttackSpec, keep: tuple[str, ...]) -> str:
    """The key a scheme that keyed ``keep`` (and none of the other later fields) gave."""
    d = spec.as_dict()
    values = {
        k: v
        for k, v in d.items()
        if k not in ("device", "max_batch") and (k not in LATER or k in keep)
    }
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRE_PRIOR = ()  # before session 3: no prior fields
SESSION3 = ("prior", "prior_weights")  # session 3 until the fix: keyed at None


def test_schemes_are_listed_and_the_current_key_is_the_pre_prior_one():
    assert [keyed for _, keyed in LEGACY_KEY_SCHEMES] == [SESSION3]
    spec = AttackSpec(device="cpu").resolved()
    assert job_key(spec) == scheme_key(spec, PRE_PRIOR)
    assert legacy_keys(spec) == [scheme_key(spec, SESSION3)]
    assert scheme_key(spec, SESSION3) != job_key(spec)


def test_prior_jobs_keep_their_session3_key_through_the_legacy_scheme(tmp_path):
    spec = AttackSpec(device="cpu", optimizer="zo_adamm", prior="resnet20").resolved()
    # prior keyed in both schemes; session 3 also keyed prior_weights = None
    assert job_key(spec) == scheme_key(spec, ("prior",))
    assert legacy_keys(spec) == [scheme_key(spec, SESSION3)]
    weights = tmp_path / "w.safetensors"
    both = dataclasses.replace(spec, prior_weights=str(weights))
    assert legacy_keys(both) == []  # nothing at its default: one key in every scheme
    assert job_key(both) == scheme_key(both, SESSION3)


PLAN = """
[grid]
optimizer = ["zo_signsgd", "sign"]
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny):
    """A tiny plan run into a store under the current scheme (its rows: the reference)."""
    folder = tmp_path_factory.mktemp("legacy")
    (folder / "plan.toml").write_text(tiny + PLAN)
    plan = load_plan(folder / "plan.toml")
    with ResultStore(folder / "ref") as store:
        assert run_batch(plan, store, LocalExecutor()).finished == 2
        rows = {j.key: store.rows(j.key) for j in plan.jobs}
    return plan, rows, folder / "ref"


def rekey(db, mapping: dict[str, str]) -> None:
    """Rewrite a store as if its jobs had been written under other keys."""
    conn = sqlite3.connect(db)
    with conn:
        for new, old in mapping.items():
            conn.execute("UPDATE jobs SET key=? WHERE key=?", (old, new))
            conn.execute("UPDATE rows SET job=? WHERE job=?", (old, new))
    conn.close()


def copy_store(src, dst):
    dst.mkdir()
    conn = sqlite3.connect(src / "results.sqlite")
    conn.execute("VACUUM INTO ?", (str(dst / "results.sqlite"),))
    conn.close()


@pytest.mark.parametrize("scheme", [PRE_PRIOR, SESSION3], ids=["pre-prior", "session3"])
def test_finished_jobs_of_a_store_written_under_either_scheme_are_skipped(
    tmp_path, reference, scheme
):
    plan, rows, ref = reference
    copy_store(ref, tmp_path / "s")
    old = {j.key: scheme_key(j.spec, scheme) for j in plan.jobs}
    rekey(tmp_path / "s" / "results.sqlite", old)
    with ResultStore(tmp_path / "s") as store:
        outcome = run_batch(plan, store, LocalExecutor())
        assert (outcome.skipped, outcome.finished, outcome.new_rows) == (2, 0, 0)
        # the work stays under the key it was written with; no second job appears
        assert store.job_keys() == set(old.values())
        for j in plan.jobs:
            assert store.rows(old[j.key]) == rows[j.key]


def test_a_partly_done_legacy_job_resumes_only_its_missing_images(tmp_path, reference):
    plan, rows, ref = reference
    copy_store(ref, tmp_path / "s")
    old = {j.key: scheme_key(j.spec, SESSION3) for j in plan.jobs}
    db = tmp_path / "s" / "results.sqlite"
    rekey(db, old)
    cut = old[plan.jobs[0].key]
    conn = sqlite3.connect(db)
    with conn:  # the last chunk (images 4, 5) never finished
        conn.execute('DELETE FROM rows WHERE job=? AND "index">=4', (cut,))
        conn.execute("UPDATE jobs SET status='running', finished_at=NULL WHERE key=?", (cut,))
    conn.close()
    with ResultStore(tmp_path / "s") as store:
        outcome = run_batch(plan, store, LocalExecutor())
        assert (outcome.skipped, outcome.finished, outcome.new_rows) == (1, 1, 2)
        assert store.job_keys() == set(old.values())
        assert store.rows(cut) == rows[plan.jobs[0].key]
        assert store.job(cut)["status"] == "finished"


def test_a_store_with_both_keys_uses_the_current_one(reference):
    plan, _, _ = reference
    spec = plan.jobs[0].spec
    both = {job_key(spec), *legacy_keys(spec)}
    adopted = adopt_stored_keys(plan, both)
    assert adopted.jobs[0].key == job_key(spec)
    # and a store that has neither: the current key (a new job)
    assert [j.key for j in adopt_stored_keys(plan, set()).jobs] == [j.key for j in plan.jobs]
    only_old = adopt_stored_keys(plan, set(legacy_keys(spec)))
    assert only_old.jobs[0] == dataclasses.replace(plan.jobs[0], key=legacy_keys(spec)[0])


def test_dry_run_listing_shows_legacy_jobs_as_finished(tmp_path, reference, tiny):
    from typer.testing import CliRunner

    from zoattack.cli.main import app

    plan, _, ref = reference
    copy_store(ref, tmp_path / "s")
    old = {j.key: scheme_key(j.spec, SESSION3) for j in plan.jobs}
    rekey(tmp_path / "s" / "results.sqlite", old)
    (tmp_path / "plan.toml").write_text(tiny + PLAN)
    res = CliRunner().invoke(
        app, ["batch", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "s"), "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("finished") == 2 and " new" not in res.output
