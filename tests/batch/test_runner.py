"""The batch driver with the local executor: rows equal `zoattack run`'s, resume, failures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoattack.batch import LocalExecutor, ResultStore, load_plan, run_batch
from zoattack.errors import ZOAttackError
from zoattack.jobs.attack import JobInterrupted, prepare, run_job

GRID = """
[grid]
optimizer = ["sign", "zo_signsgd"]
seed = [0, 1]

[[job]]
norm = "l2"
optimizer = "square"
images = 5
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny):
    """The plan's jobs run straight through run_job, as `zoattack run` runs them."""
    folder = tmp_path_factory.mktemp("ref")
    (folder / "plan.toml").write_text(tiny + GRID)
    plan = load_plan(folder / "plan.toml")
    return plan, {j.key: run_job(prepare(j.spec)).rows for j in plan.jobs}


def stored(store: ResultStore) -> dict[str, list[dict]]:
    return {j["key"]: store.rows(j["key"]) for j in store.jobs()}


def test_batch_rows_equal_run_rows_and_jobs_record_everything(tmp_path, reference):
    plan, ref = reference
    with ResultStore(tmp_path) as store:
        outcome = run_batch(plan, store, LocalExecutor())
        assert (outcome.jobs, outcome.finished, outcome.skipped, outcome.failed) == (5, 5, 0, {})
        assert outcome.new_rows == 6 * 4 + 5
        assert stored(store) == ref
        for rec in store.jobs():
            assert rec["status"] == "finished"
            assert rec["scored_inputs"] == sum(r["queries"] for r in ref[rec["key"]])
            assert rec["started_at"] <= rec["finished_at"] and rec["seconds"] > 0
            assert rec["zoattack_version"] and rec["torch_version"] == torch.__version__
            assert '"counting_rule"' in rec["settings"]
        # the same plan again: nothing to do, nothing changes
        before = store.jobs()
        again = run_batch(plan, store, LocalExecutor())
        assert (again.skipped, again.finished, again.new_rows) == (5, 0, 0)
        assert store.jobs() == before


def test_resume_redoes_only_missing_images_and_matches(tmp_path, reference):
    plan, ref = reference
    with ResultStore(tmp_path) as store:
        run_batch(plan, store, LocalExecutor())
        first, second = plan.jobs[0].key, plan.jobs[1].key
        # as if killed mid-way: one chunk of one job half stored, another job not started
        store.conn.execute('DELETE FROM rows WHERE job=? AND "index" IN (3, 5)', (first,))
        store.conn.execute("DELETE FROM rows WHERE job=?", (second,))
        store.conn.execute("UPDATE jobs SET status='running' WHERE key IN (?, ?)", (first, second))
        outcome = run_batch(plan, store, LocalExecutor())
        assert outcome.skipped == 3 and outcome.finished == 2
        assert outcome.new_rows == 2 + 6
        assert stored(store) == ref


class _Dies(nn.Module):
    def __init__(self, inner: nn.Module, ok_calls: int) -> None:
        super().__init__()
        self.inner, self.ok_calls, self.calls = inner, ok_calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise ZOAttackError("the model stopped answering")
        return self.inner(x)


def test_a_failing_job_keeps_its_rows_and_the_batch_goes_on(tmp_path, reference):
    plan, ref = reference
    victim = plan.jobs[2]
    executor = LocalExecutor()
    job = prepare(victim.spec)
    counter = _Dies(job.model, ok_calls=10**9).eval()
    job.model = counter
    run_job(job, only_chunks={0})
    job.model = _Dies(counter.inner, ok_calls=counter.calls + 1).eval()  # dies in chunk 1
    executor._cache.jobs[victim.key] = job
    with ResultStore(tmp_path) as store:
        outcome = run_batch(plan, store, executor)
        assert list(outcome.failed) == [victim.key]
        assert "the model stopped answering" in outcome.failed[victim.key]
        assert outcome.finished == 4
        rec = store.job(victim.key)
        assert rec["status"] == "failed" and "stopped answering" in rec["error"]
        kept = store.rows(victim.key)
        assert 0 < len(kept) < 6 and kept == ref[victim.key][: len(kept)]
        # rerun with a healthy model: the failed job completes, identical to the reference
        outcome = run_batch(plan, store, LocalExecutor())
        assert outcome.finished == 1 and not outcome.failed
        assert stored(store) == ref


def test_a_job_that_cannot_load_fails_alone(tmp_path, reference, monkeypatch):
    plan, _ = reference
    import zoattack.batch.executors as ex

    real = ex.prepare
    bad = plan.jobs[0].key

    def prepare(spec, model=None):
        from zoattack.batch.plan import job_key

        if job_key(spec) == bad:
            raise FileNotFoundError("weights.safetensors")
        return real(spec, model=model)

    monkeypatch.setattr(ex, "prepare", prepare)
    with ResultStore(tmp_path) as store:
        outcome = run_batch(plan, store, LocalExecutor())
    assert list(outcome.failed) == [bad] and outcome.finished == 4
    assert (
        "could not prepare the job: FileNotFoundError: weights.safetensors" in outcome.failed[bad]
    )


def test_keyboard_interrupt_stores_the_finished_images(tmp_path, reference, monkeypatch):
    plan, ref = reference
    import zoattack.batch.executors as ex

    calls = {"n": 0}
    real = ex.run_job

    def run_job_then_interrupt(job, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise JobInterrupted(
                "stopped at images 4-5: interrupted by the user", []
            ) from KeyboardInterrupt()
        return real(job, **kw)

    monkeypatch.setattr(ex, "run_job", run_job_then_interrupt)
    with ResultStore(tmp_path) as store:
        with pytest.raises(KeyboardInterrupt):
            run_batch(plan, store, LocalExecutor())
        first = plan.jobs[0].key
        assert store.rows(first) == ref[first][:4]
        status = store.conn.execute("SELECT status FROM batches").fetchone()[0]
        assert status == "interrupted" and store.job(first)["status"] == "running"
