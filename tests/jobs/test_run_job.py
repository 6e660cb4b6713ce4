"""`zoattack run` as a library call (jobs/run.py, jobs/universal.py) and its folder rules:
resume accepts the command that started a run, a finished run is complete, a folder holding
a run is never silently replaced, and the ledger counts the queries of every part."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.errors import ZOAttackError
from zoattack.jobs.attack import AttackSpec, JobInterrupted, prepare, run_job
from zoattack.jobs.run import resume_differences, run_attack_job
from zoattack.jobs.universal import run_universal_job, universal_target

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SMALL = dict(images=6, budget=40, chunk_size=3, seed=3, device="cpu")
# Every update rule with every norm it supports (sign: Linf only).
RULES_NORMS = [
    ("sign", "linf"),
    *[
        (r, n)
        for r in ("square", "zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")
        for n in ("linf", "l2")
    ],
]


class ModelDown(ZOAttackError):
    pass


class Failing(nn.Module):
    """Answers ``ok_calls`` forward calls, then raises ``error`` (a dead model, or Ctrl-C)."""

    def __init__(self, inner: nn.Module, ok_calls: int, error: BaseException) -> None:
        super().__init__()
        self.inner, self.ok_calls, self.error, self.calls = inner, ok_calls, error, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise self.error
        return self.inner(x)


def _run(*args: str):
    return runner.invoke(app, ["run", *args])


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("rule", "norm"), RULES_NORMS)
def test_resume_accepts_the_command_that_started_the_run(tmp_path, rule, norm):
    out = tmp_path / "run"
    cmd = [
        "--optimizer", rule, "--norm", norm, "--images", "4", "--budget", "30",
        "--chunk-size", "2", "--seed", "3", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    res = _run(*cmd)
    assert res.exit_code == 0, res.output
    full = (out / "per_image.csv").read_text()
    # Interrupted after the first chunk: the identical command plus --resume continues it.
    (out / "per_image.csv").write_text("".join(full.splitlines(keepends=True)[:3]))
    res = _run(*cmd, "--resume", "--json")
    assert res.exit_code == 0, res.output
    assert (out / "per_image.csv").read_text() == full
    assert json.loads(res.stdout)["summary"]["resumed_with_images"] == 2
    # Resuming a finished run says so, reprints its summary and changes nothing.
    before = _files(out)
    res = _run(*cmd, "--resume", "--json")
    assert res.exit_code == 0, res.output
    assert "is complete" in res.stderr
    assert (
        json.loads(res.stdout)["summary"]
        == json.loads((out / "summary.json").read_text())["summary"]
    )
    assert _files(out) == before


def test_resume_compares_resolved_settings_both_ways():
    spec = AttackSpec(optimizer="zo_adamm", norm="l2", eps=1.0, **SMALL)
    resolved = spec.resolved()
    # What today's run.json holds (defaults filled in) and the bare options both match.
    assert resume_differences(resolved.as_dict(), spec) == []
    assert resume_differences(spec.as_dict(), resolved) == []
    # The estimator's own defaults written out explicitly are the same attack.
    explicit = {**spec.as_dict(), "samples": 10, "mu": resolved.mu}
    from zoattack.jobs.attack import effective_settings

    assert effective_settings(resolved)["samples"] == 10
    assert resume_differences(explicit, spec) == []
    assert resume_differences({**resolved.as_dict(), "budget": 50}, spec) == [
        "budget=50 there, 40 now"
    ]
    assert resume_differences({**spec.as_dict(), "device": "cuda", "max_batch": 7}, spec) == []


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "d"
    base = ["--images", "4", "--budget", "20", "--chunk-size", "2", "--device", "cpu"]
    assert _run(*base, "--out", str(out)).exit_code == 0
    before = _files(out)
    for extra in ([], ["--universal"]):
        res = _run("--images", "2", "--budget", "20", "--device", "cpu", "--out", str(out), *extra)
        assert res.exit_code == 2, res.output
        assert "already holds a finished run" in res.stderr and "--overwrite" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert _files(out) == before  # nothing touched
    # A partial run (killed: status running) is protected too.
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    res = _run("--images", "2", "--budget", "20", "--device", "cpu", "--out", str(out))
    assert res.exit_code == 2 and "already holds a run" in res.stderr
    res = _run(*base, "--out", str(out), "--resume", "--overwrite")
    assert res.exit_code == 2 and "pick one" in res.stderr
    # --overwrite replaces it: two rows, no leftovers of the old run.
    res = _run(
        "--images", "2", "--budget", "20", "--device", "cpu", "--out", str(out), "--overwrite"
    )
    assert res.exit_code == 0, res.output
    assert len((out / "per_image.csv").read_text().splitlines()) == 3
    res = _run("--universal", "--images", "2", "--budget", "20", "--device", "cpu",
               "--out", str(out), "--overwrite")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["delta.safetensors", "summary.json"]


def test_summary_counts_the_scored_inputs_of_every_part(tmp_path):
    spec = AttackSpec(optimizer="zo_signsgd", **SMALL)
    base = prepare(spec).model
    counter = Failing(base, 10**9, ModelDown("never")).eval()
    run_job(prepare(spec, model=counter))
    # Fail three quarters of the way in: chunk 0 done, chunk 1 cut short.
    failing = Failing(base, counter.calls * 3 // 4, ModelDown("gone")).eval()
    with pytest.raises(JobInterrupted) as info:
        run_attack_job(spec, out=tmp_path, model=failing)
    first = info.value.scored_inputs
    assert first > 0 and "rerun with --resume" in str(info.value)
    parts = [json.loads(line) for line in (tmp_path / "parts.jsonl").read_text().splitlines()]
    assert parts[-1]["complete"] is False and sum(p["scored_inputs"] for p in parts) == first
    report = run_attack_job(spec, out=tmp_path, resume=True)
    s = report.summary
    assert 0 < s["scored_inputs_this_session"] < s["scored_inputs"]
    assert s["scored_inputs"] == first + s["scored_inputs_this_session"]
    stored = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert stored["scored_inputs"] == s["scored_inputs"]
    # Rows equal an uninterrupted run's; only the ledger remembers the interruption.
    clean = run_attack_job(spec, out=tmp_path / "clean")
    assert (tmp_path / "per_image.csv").read_text() == (
        tmp_path / "clean" / "per_image.csv"
    ).read_text()
    assert clean.summary["scored_inputs"] == clean.summary["scored_inputs_this_session"]
    assert s["scored_inputs"] > clean.summary["scored_inputs"]  # the cut chunk was redone


def test_ctrl_c_names_the_reason():
    spec = AttackSpec(optimizer="zo_sgd", **SMALL)
    base = prepare(spec)
    counter = Failing(base.model, 10**9, ModelDown("never")).eval()
    run_job(prepare(spec, model=counter))
    job = prepare(spec, model=Failing(base.model, counter.calls * 3 // 4, KeyboardInterrupt()))
    with pytest.raises(JobInterrupted) as info:
        run_job(job)
    msg = str(info.value)
    assert msg.startswith("stopped at images ") and ": interrupted by the user" in msg
    assert ": ;" not in msg and not msg.endswith(": ")
    assert isinstance(info.value.__cause__, KeyboardInterrupt)  # batches rely on this


def test_universal_job_is_a_library_call():
    spec = AttackSpec(optimizer="zo_signsgd", images=6, budget=30, seed=1, device="cpu")
    job = prepare(spec)
    a = run_universal_job(job)
    b = run_universal_job(job)
    assert torch.equal(a.delta, b.delta)  # seeded by spec.seed, not the global RNG
    s = a.summary
    assert s["images"] == 6 and s["queries_per_image"] <= 30
    assert s["scored_inputs"] == 6 * s["evaluations"] + 6  # + the clean check
    assert float(a.delta.abs().max()) <= spec.resolved().eps + 1e-6
    gen = torch.Generator().manual_seed(0)
    assert universal_target(None, 10, gen) is None and universal_target("3", 10, gen) == 3
    assert 0 <= universal_target("random", 10, gen) < 10
    with pytest.raises(ValueError, match="--universal takes --target"):
        universal_target("least-likely", 10, gen)


def test_out_naming_a_file_is_one_line_exit_2(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    res = _run("--images", "2", "--budget", "20", "--device", "cpu", "--out", str(f))
    assert res.exit_code == 2 and "is a file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and f.read_text() == "keep me"


def test_ctrl_c_outside_a_chunk_exits_3_with_one_line(tmp_path, monkeypatch):
    import zoattack.jobs.run as run_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "prepare", interrupted)
    res = _run("--images", "2", "--budget", "20", "--device", "cpu", "--out", str(tmp_path / "o"))
    assert res.exit_code == 3, res.output
    assert "interrupted by the user" in res.stderr and "Traceback" not in res.output
