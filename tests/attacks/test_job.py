"""Attack jobs: spec validation, per-chunk determinism, interruption and resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.errors import UnknownNameError, ZOAttackError
from zoattack.jobs.attack import (
    AttackSpec,
    JobInterrupted,
    chunk_bounds,
    chunk_seed,
    prepare,
    run_job,
    summarize_rows,
)
from zoattack.optim import OPTIMIZERS

SMALL = dict(images=10, budget=60, chunk_size=4, device="cpu")


class ModelDown(ZOAttackError):
    pass


class Flaky(nn.Module):
    """Answers ``ok_calls`` forward calls, then fails like a dead remote model."""

    def __init__(self, inner: nn.Module, ok_calls: int) -> None:
        super().__init__()
        self.inner = inner
        self.ok_calls = ok_calls
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise ModelDown("the model stopped answering")
        return self.inner(x)


@pytest.fixture(scope="module")
def full_rows():
    job = prepare(AttackSpec(**SMALL))
    return run_job(job).rows


def test_spec_rejects_unknown_and_invalid_settings():
    with pytest.raises(ValueError, match="unknown attack setting budgt \\(did you mean budget"):
        AttackSpec.from_dict({"budgt": 10})
    with pytest.raises(ValueError, match="--budget must be >= 2"):
        AttackSpec(budget=1).resolved()
    with pytest.raises(ValueError, match="--chunk-size"):
        AttackSpec(chunk_size=0).resolved()
    with pytest.raises(UnknownNameError, match="did you mean lizo"):
        AttackSpec(optimizer="lizzo").resolved()
    with pytest.raises(ValueError, match="lr must be"):
        AttackSpec(optimizer="zo_sgd", lr=-1.0).resolved()


def test_spec_defaults_follow_norm():
    linf = AttackSpec().resolved()
    assert (linf.optimizer, linf.eps, linf.lr) == ("sign", 0.1, 0.1)
    l2 = AttackSpec(norm="L2").resolved()
    assert (l2.norm, l2.optimizer, l2.eps) == ("l2", "square", 1.5)
    lizo = AttackSpec(optimizer="lizo", norm="l2").resolved()
    tuned = OPTIMIZERS.get("lizo").tuned("l2")
    assert tuned.lr is not None and lizo.subspace == tuned.subspace
    assert lizo.lr == pytest.approx(tuned.lr * 1.5) and lizo.estimator == "lizo"
    # Resolving twice changes nothing (stored specs are compared on resume).
    assert lizo.resolved() == lizo


def test_chunks_and_seeds():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    seeds = {chunk_seed(s, k) for s in range(5) for k in range(5)}
    assert len(seeds) == 25 and all(0 <= v < 2**63 for v in seeds)


def test_rows_cover_every_image_once_and_respect_the_budget(full_rows):
    assert [r["index"] for r in full_rows] == list(range(10))
    assert all(1 <= r["queries"] <= 60 for r in full_rows)
    summary = summarize_rows(full_rows, wall_seconds=1.0, scored_inputs=1)
    assert summary["images"] == 10
    assert summary["successes"] == sum(r["success"] for r in full_rows)


def test_resume_skips_stored_images_and_reproduces_the_rest(full_rows):
    job = prepare(AttackSpec(**SMALL))
    # Images 0-5 stored: chunk 0 is skipped, chunk 1 (4-7) is re-run and only 6, 7 emitted.
    got: list[dict] = []
    out = run_job(job, done=set(range(6)), on_rows=got.extend)
    assert [r["index"] for r in got] == [6, 7, 8, 9]
    assert got == full_rows[6:]
    assert [c.chunk for c in out.chunks] == [1, 2]


def test_model_failure_keeps_finished_images_and_resume_completes_identically(full_rows):
    base = prepare(AttackSpec(**SMALL))
    flaky = Flaky(base.model, ok_calls=100).eval()
    job = prepare(AttackSpec(**SMALL), model=flaky)
    stored: list[dict] = []
    with pytest.raises(JobInterrupted, match="stopped at images .*the model stopped answering"):
        run_job(job, on_rows=stored.extend)
    # Chunk 0 ended before the failure; in chunk 1 (4-7) only image 5 was still running.
    assert [r["index"] for r in stored] == [0, 1, 2, 3, 4, 6, 7]
    by_index = {r["index"]: r for r in full_rows}
    for r in stored:  # what was kept is exactly what an uninterrupted run produces
        assert r == by_index[r["index"]]
    assert len({r["index"] for r in stored}) == len(stored)
    rest = run_job(base, done={r["index"] for r in stored}, on_rows=stored.extend)
    assert sorted(stored, key=lambda r: r["index"]) == full_rows
    assert rest.rows and len(stored) == 10


runner = CliRunner()
ARGS = ["run", "--images", "10", "--budget", "60", "--chunk-size", "4", "--device", "cpu"]


def _csv(path):
    return list(csv.DictReader(path.open()))


def test_cli_resume_after_a_torn_write(tmp_path):
    full = tmp_path / "full"
    assert runner.invoke(app, [*ARGS, "--out", str(full)]).exit_code == 0
    part = tmp_path / "part"
    assert runner.invoke(app, [*ARGS, "--out", str(part)]).exit_code == 0
    lines = (part / "per_image.csv").read_text().splitlines(keepends=True)
    # A crash mid-append: three full rows and half of the fourth.
    (part / "per_image.csv").write_text("".join(lines[:4]) + lines[4][:5])
    res = runner.invoke(app, [*ARGS, "--out", str(part), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert _csv(part / "per_image.csv") == _csv(full / "per_image.csv")
    summary = json.loads(res.stdout)["summary"]
    assert summary["images"] == 10 and summary["resumed_with_images"] == 3
    status = json.loads((part / "run.json").read_text())["status"]
    assert status == "finished"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume"], "--resume needs --out"),
        (["--resume", "--out", "{tmp}/nothing"], "nothing to resume"),
        (["--resume", "--universal", "--out", "{tmp}"], "--universal"),
    ],
)
def test_cli_resume_errors(tmp_path, args, message):
    res = runner.invoke(app, [*ARGS, *[a.format(tmp=tmp_path) for a in args]])
    assert res.exit_code == 2
    assert message in res.stderr


def test_cli_resume_refuses_other_settings(tmp_path):
    assert runner.invoke(app, [*ARGS, "--out", str(tmp_path)]).exit_code == 0
    res = runner.invoke(app, [*ARGS, "--out", str(tmp_path), "--resume", "--budget", "50"])
    assert res.exit_code == 2
    assert "budget=60 there, 50 now" in res.stderr
    # Device and batch size do not change results, so they may differ.
    res = runner.invoke(app, [*ARGS, "--out", str(tmp_path), "--resume", "--max-batch", "7"])
    assert res.exit_code == 0, res.output
