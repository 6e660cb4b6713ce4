"""`--executor ray` on a local Ray with 2 CPUs: same rows as the local executor, lost workers
retried with their rows written once, GPU requests. Skipped where Ray is not installed."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from zoattack.batch import LocalExecutor, RayExecutor, ResultStore, load_plan, run_batch
from zoattack.batch.executors import task_options
from zoattack.jobs.attack import AttackSpec

GRID = """
[grid]
optimizer = ["sign", "zo_signsgd"]
seed = [0, 1]
"""


def test_task_options_ask_for_a_gpu_only_for_cuda_jobs():
    cpu = AttackSpec(device="cpu").resolved()
    cuda = AttackSpec(device="cuda").resolved()
    assert task_options(cpu, 3) == {"num_cpus": 1, "num_gpus": 0, "max_retries": 3}
    assert task_options(cuda, 5) == {"num_cpus": 1, "num_gpus": 1, "max_retries": 5}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def plan_and_reference(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("rayplan")
    (folder / "plan.toml").write_text(tiny + GRID)
    plan = load_plan(folder / "plan.toml")
    with ResultStore(folder / "local") as store:
        run_batch(plan, store, LocalExecutor())
        return plan, store.rows()


def test_ray_rows_equal_local_rows(ray_local, plan_and_reference, tmp_path):
    plan, reference = plan_and_reference
    with ResultStore(tmp_path) as store:
        outcome = run_batch(plan, store, RayExecutor())
        assert outcome.finished == 4 and not outcome.failed
        assert store.rows() == reference
        assert {j["status"] for j in store.jobs()} == {"finished"}
        assert all(j["settings"] and j["scored_inputs"] > 0 for j in store.jobs())
    assert ray_local.is_initialized()  # an existing Ray is used, not shut down


def test_a_lost_worker_is_retried_and_its_rows_written_once(
    ray_local, plan_and_reference, tmp_path
):
    plan, reference = plan_and_reference
    marker = tmp_path / "crashed"
    from zoattack.batch.executors import execute_chunk

    victims = {j.key for j in plan.jobs[:2]}

    def dies_once(key, spec, chunk, done):
        # The first attempt at chunk 1 of two jobs kills its worker process outright.
        flag = f"{marker}-{key}-{chunk}"
        if key in victims and chunk == 1 and not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return execute_chunk(key, spec, chunk, done)

    with ResultStore(tmp_path) as store:
        outcome = run_batch(plan, store, RayExecutor(max_retries=2, chunk_fn=dies_once))
        assert outcome.finished == 4 and not outcome.failed
        assert store.rows() == reference
    assert len(list(tmp_path.glob("crashed-*-1"))) == 2  # both crashes happened


def test_without_retries_a_lost_worker_fails_its_job_and_a_rerun_completes(
    ray_local, plan_and_reference, tmp_path
):
    plan, reference = plan_and_reference
    from zoattack.batch.executors import execute_chunk

    victim = plan.jobs[0].key

    def always_dies(key, spec, chunk, done):
        if key == victim and chunk == 2:
            os._exit(1)
        return execute_chunk(key, spec, chunk, done)

    with ResultStore(tmp_path) as store:
        outcome = run_batch(plan, store, RayExecutor(max_retries=0, chunk_fn=always_dies))
        assert (
            list(outcome.failed) == [victim] and "chunk 2 failed on Ray" in outcome.failed[victim]
        )
        assert len(store.rows(victim)) == 4
        outcome = run_batch(plan, store, RayExecutor())
        assert outcome.finished == 1 and store.rows() == reference


def test_cli_executor_ray(ray_local, plan_and_reference, tmp_path):
    from zoattack.cli.main import app

    plan, reference = plan_and_reference
    res = CliRunner().invoke(
        app, ["batch", str(plan.path), "--executor", "ray", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    with ResultStore(tmp_path, create=False) as store:
        assert store.rows() == reference
    res = CliRunner().invoke(
        app,
        [
            "batch",
            str(plan.path),
            "--executor",
            "ray",
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "gpu"),
        ],
    )
    if ray_local.cluster_resources().get("GPU", 0) < 1:
        assert res.exit_code == 2
        assert "the Ray cluster has no GPU" in " ".join(res.stderr.split())
