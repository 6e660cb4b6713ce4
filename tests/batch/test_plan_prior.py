"""Plans with a transfer prior: `prior` / `prior_weights` resolve as `zoattack run --prior`
would, a plan job runs with the surrogate (named in its settings, never charged), and a bad
prior fails the plan with one line and exit 2."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from zoattack.batch.plan import load_plan
from zoattack.cli.main import app
from zoattack.jobs.attack import AttackSpec

runner = CliRunner()


def test_a_plan_with_prior_resolves_like_run(plan_file, tmp_path):
    weights = tmp_path / "sur.safetensors"
    weights.write_bytes(b"")  # only its existence is checked at load
    plan = load_plan(
        plan_file("""
        [grid]
        optimizer = ["zo_adamm", "zo_signsgd"]
        prior = "resnet20"

        [[job]]
        optimizer = "zo_sgd"
        prior = "resnet20"
        prior_weights = "sur.safetensors"
    """)
    )
    for job, opt in zip(plan.jobs[:2], ("zo_adamm", "zo_signsgd")):
        expected = AttackSpec.from_dict(
            dict(
                model="small_cnn",
                dataset="fashion-mnist",
                images=6,
                budget=40,
                chunk_size=2,
                device="cpu",
                optimizer=opt,
                prior="resnet20",
            )
        ).resolved()
        assert job.spec == expected
        assert job.spec.estimator == "prior" and job.spec.prior == "resnet20"
    # a relative prior_weights path is taken from the plan's folder
    assert plan.jobs[2].spec.prior_weights == str(weights)
    assert plan.jobs[0].key != plan.jobs[1].key


def test_a_plan_job_runs_with_the_prior_and_names_the_surrogate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # [batch] out is relative to the current folder
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[batch]\nname = "p"\nout = "res"\n'
        '[defaults]\nmodel = "small_cnn"\nimages = 3\nbudget = 40\nchunk_size = 2\n'
        'device = "cpu"\n'
        '[[job]]\noptimizer = "zo_adamm"\nprior = "resnet20"\n'
    )
    res = runner.invoke(app, ["batch", str(plan)])
    assert res.exit_code == 0, res.output
    with sqlite3.connect(tmp_path / "res" / "results.sqlite") as con:
        status, est, settings, scored = con.execute(
            "SELECT status, estimator, settings, scored_inputs FROM jobs"
        ).fetchone()
        queries = [r[0] for r in con.execute("SELECT queries FROM rows")]
    assert status == "finished" and est == "prior"
    s = json.loads(settings)
    assert s["prior"] == "resnet20" and "surrogate resnet20" in s["method"]
    # the victim's ledger: every scored input is in some row; the surrogate adds none
    assert len(queries) == 3 and sum(queries) == scored


@pytest.mark.parametrize(
    "job, needle",
    [
        ('prior = "nosuchnet"', "prior (the surrogate model): unknown model 'nosuchnet'"),
        ('prior = "resnet20"\nprior_weights = "none.safetensors"', "prior_weights file"),
        ('prior = "remote:http://127.0.0.1:9"', "a surrogate must be a local model"),
        ('prior_weights = "w.safetensors"', "--prior MODEL"),
    ],
)
def test_a_bad_prior_in_a_plan_exits_2_with_one_line(tmp_path, job, needle):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[defaults]\nmodel = "small_cnn"\nimages = 2\nbudget = 30\ndevice = "cpu"\n'
        f'[[job]]\noptimizer = "zo_adamm"\n{job}\n'
    )
    res = runner.invoke(app, ["batch", str(plan)])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "plan.toml:6" in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
