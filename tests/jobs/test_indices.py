"""--indices: data-set indices instead of the first N test images, on run, eval, certify and
in batch plans; rows keep the data-set indices; bad lists are one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.data import load_dataset
from zoattack.data.registry import check_indices, parse_indices
from zoattack.jobs.attack import AttackSpec, prepare, run_job

runner = CliRunner()


def test_parse_indices():
    assert parse_indices("0:3,250,300:302") == [0, 1, 2, 250, 300, 301]
    assert parse_indices(" 7 , 2:4 ") == [7, 2, 3]  # order kept
    for bad, why in [
        ("1,1", "given twice"),
        ("0:5,3", "given twice"),
        ("5:5", "empty"),
        ("a", "cannot read"),
        ("1:b", "cannot read"),
        ("", "empty"),
        ("-2", ">= 0"),
        ("0:100000000000", "more indices"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_indices(bad)
    with pytest.raises(ValueError, match="has 10 test images"):
        check_indices([3, 10], 10, "x")


def test_the_job_attacks_those_images_and_rows_keep_their_indices():
    spec = AttackSpec(indices="905,3,7", budget=20, chunk_size=2, device="cpu")
    assert spec.resolved().images == 3
    job = prepare(spec)
    full = load_dataset("fashion-mnist", split="test", limit=906)
    assert torch.equal(job.images, full.images[[905, 3, 7]])
    assert torch.equal(job.labels, full.labels[[905, 3, 7]])
    rows = run_job(job).rows
    assert sorted(r["index"] for r in rows) == [3, 7, 905]
    assert {r["index"]: r["label"] for r in rows} == {
        905: int(full.labels[905]),
        3: int(full.labels[3]),
        7: int(full.labels[7]),
    }
    # done is in data-set indices: the chunk holding 905 and 3 is skipped, 7's is run
    again = run_job(job, done={905, 3}).rows
    assert [r["index"] for r in again] == [7]
    assert again[0] == next(r for r in rows if r["index"] == 7)  # seeded per chunk
    assert run_job(job, done={905, 3, 7}).rows == []


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


@pytest.mark.parametrize(
    ("bad", "why"), [("0:5,3", "given twice"), ("x:3", "cannot read"), ("99999", "test images")]
)
@pytest.mark.parametrize("command", ["run", "eval"])
def test_cli_refuses_bad_indices(command, bad, why, tmp_path):
    extra = ["--budget", "10"] if command == "run" else ["--steps", "1", "--restarts", "1"]
    res = runner.invoke(app, [command, "--indices", bad, "--device", "cpu", *extra])
    assert why in _one_line(res)


def test_cli_run_and_resume_with_indices(tmp_path):
    out = tmp_path / "run"
    base = ["run", "--indices", "10:12,40", "--budget", "20", "--device", "cpu"]
    res = runner.invoke(app, [*base, "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = (out / "per_image.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["10", "11", "40"]
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["spec"]["indices"] == "10:12,40" and recorded["settings"]["images"] == 3
    res = runner.invoke(app, [*base, "--out", str(out), "--resume"])
    assert res.exit_code == 0 and "is complete (3 images)" in res.output
    res = runner.invoke(app, [*base[:2], "10:13", *base[3:], "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "indices" in res.output


def test_cli_eval_rows_keep_indices(tmp_path):
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        ["eval", "--indices", "7,2", "--steps", "1", "--restarts", "1", "--device", "cpu"]
        + ["--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    lines = (out / "per_image.csv").read_text().splitlines()
    assert sorted(int(ln.split(",")[0]) for ln in lines[1:]) == [2, 7]


def test_batch_plan_indices(tmp_path):
    from zoattack.batch import LocalExecutor, ResultStore, load_plan, run_batch

    (tmp_path / "plan.toml").write_text(
        '[defaults]\nbudget = 10\ndevice = "cpu"\n[[job]]\nindices = "4,0:2"\n'
        '[[job]]\nindices = "4,0:2"\noptimizer = "square"\n'
    )
    plan = load_plan(tmp_path / "plan.toml")
    assert [j.spec.images for j in plan.jobs] == [3, 3]
    with ResultStore(tmp_path / "store") as store:
        run_batch(plan, store, LocalExecutor())
        for job in plan.jobs:
            rows = store.rows(job.key)
            assert sorted(r["index"] for r in rows) == [0, 1, 4]
            ref = run_job(prepare(job.spec)).rows
            assert sorted(rows, key=lambda r: r["index"]) == sorted(ref, key=lambda r: r["index"])
    (tmp_path / "bad.toml").write_text('[[job]]\nindices = "3,3"\n')
    with pytest.raises(ValueError, match="given twice"):
        load_plan(tmp_path / "bad.toml")
