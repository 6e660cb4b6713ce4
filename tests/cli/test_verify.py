"""adversarial.safetensors out of `zoattack run --out` (crash-safe, resumable), `zoattack
verify` on the attacked model and another one, and the run's progress line (issue 22)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zoattack.adversarial import PARTS, load_adversarial, write_examples
from zoattack.cli.main import app
from zoattack.errors import InvalidScoresError
from zoattack.jobs.attack import AttackSpec, JobInterrupted
from zoattack.jobs.run import run_attack_job

runner = CliRunner()
RUN = ["--images", "4", "--budget", "40", "--seed", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "run"
    res = runner.invoke(app, ["run", "--attack", "square", *RUN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "adversarial.safetensors" in res.stdout
    return out


def _snapshot(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_run_writes_the_adversarial_examples_with_its_rows(run_dir):
    ex = load_adversarial(run_dir / "adversarial.safetensors")
    rows = (run_dir / "per_image.csv").read_text().splitlines()[1:]
    assert ex.index.tolist() == [int(r.split(",")[0]) for r in rows] == [0, 1, 2, 3]
    assert ex.x_adv.dtype == torch.float32 and ex.x_adv.shape == (4, 1, 28, 28)
    assert ex.success.tolist() == [r.split(",")[4] == "1" for r in rows]
    assert ex.queries.tolist() == [int(r.split(",")[5]) for r in rows]
    assert ex.final_prediction.tolist() == [int(r.split(",")[3]) for r in rows]
    assert ex.metadata["model"] == "small_cnn" and ex.metadata["norm"] == "linf"
    assert not (run_dir / PARTS).exists()  # shards merged and removed at the end


def test_verify_confirms_on_the_attacked_model_and_writes_nothing(run_dir):
    before = _snapshot(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    res = runner.invoke(app, ["verify", str(run_dir), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["same_model"] and report["threat_model_checked"]
    assert report["confirmed"] == report["recorded_successes"] == summary["summary"]["successes"]
    assert report["success_rate"] == summary["summary"]["success_rate"]
    assert report["verification_queries"] == 4  # one check per example, counted apart
    assert _snapshot(run_dir) == before  # nothing written without --save
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    res = runner.invoke(app, ["verify", str(run_dir)])
    assert res.exit_code == 0 and "confirmed rate" in res.stdout
    # rates as percents in the table, as `zoattack run` prints them (fractions stay in --json)
    assert _table_value(res.stdout, "confirmed rate") == "100.0%"
    rate = summary["summary"]["success_rate"]
    assert _table_value(res.stdout, "success rate") == f"{100 * rate:.1f}%"


def _table_value(text: str, metric: str) -> str:
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in text.splitlines() if "│" in ln]
    return next(value for name, value in rows if name == metric)


def test_verify_on_another_model_reports_transfer_and_saves_when_asked(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    res = runner.invoke(app, ["verify", str(copy), "--model", "resnet20", "--json", "--save"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert not report["same_model"] and report["model"] == "resnet20"
    assert 0 <= report["transferred"] <= report["transfer_basis"] <= report["recorded_successes"]
    assert report["verification_queries"] == 8  # the clean images and the examples
    assert json.loads((copy / "verify-resnet20.json").read_text()) == report


def test_verify_exits_1_when_an_example_does_not_fool_the_model(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ex = load_adversarial(copy)
    assert bool(ex.success.any())
    from zoattack.data import load_dataset

    clean = load_dataset("fashion-mnist", split="test", limit=4).images
    t = ex.tensors()
    t["x_adv"] = clean.clone()  # the clean images fool nobody
    write_examples(copy / "adversarial.safetensors", t, ex.metadata)
    res = runner.invoke(app, ["verify", str(copy), "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["confirmed"] == 0
    assert report["not_confirmed"] == ex.index[ex.success].tolist()


class Failing(nn.Module):
    """The victim, until it has answered ``calls`` batches; then NaN scores (a model fault)."""

    def __init__(self, inner: nn.Module, calls: int) -> None:
        super().__init__()
        self.inner, self.left = inner, calls

    def forward(self, x):
        self.left -= 1
        if self.left < 0:
            raise InvalidScoresError("model returned NaN/inf scores (test fault)")
        return self.inner(x)


def test_an_interrupted_run_keeps_its_examples_and_resumes_to_identical_content(tmp_path):
    from zoattack.data import load_dataset
    from zoattack.models import create_model

    spec = AttackSpec(
        optimizer="zo_signsgd", images=6, budget=40, chunk_size=2, seed=5, device="cpu"
    )
    run_attack_job(spec, out=tmp_path / "ref")
    want = load_adversarial(tmp_path / "ref")
    data = load_dataset("fashion-mnist", split="test", limit=6)
    victim = create_model("small_cnn", dataset=data, pretrained=True)
    counting = Failing(victim, calls=10**9)
    run_attack_job(spec, out=tmp_path / "count", model=counting)
    calls = 10**9 - counting.left  # model calls of a whole run: fail half-way through
    cut = tmp_path / "cut"
    with pytest.raises(JobInterrupted):
        run_attack_job(spec, out=cut, model=Failing(victim, calls=calls // 2))
    assert (cut / PARTS).is_dir() and not (cut / "adversarial.safetensors").exists()
    part = load_adversarial(cut)  # an unfinished run's shards are readable
    rows = (cut / "per_image.csv").read_text().splitlines()[1:]
    assert 0 < len(part) < 6 and part.index.tolist() == sorted(int(r.split(",")[0]) for r in rows)
    report = run_attack_job(spec, out=cut, resume=True)
    assert "adversarial.safetensors" in report.written
    got = load_adversarial(cut / "adversarial.safetensors")
    assert not (cut / PARTS).exists()
    for key, value in want.tensors().items():
        if key == "x_adv":
            torch.testing.assert_close(got.x_adv, value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(got.tensors()[key], value), key
    # --overwrite starts clean: no examples of the old run survive
    (cut / PARTS).mkdir()
    (cut / PARTS / "stale.safetensors").write_bytes(b"x")
    run_attack_job(dataclasses_replace(spec, images=2), out=cut, overwrite=True)
    assert len(load_adversarial(cut)) == 2 and not (cut / PARTS).exists()


def dataclasses_replace(spec, **kw):
    import dataclasses

    return dataclasses.replace(spec, **kw)


# ---------------------------------------------------------------------------------- progress
def test_progress_line_says_how_it_is_going():
    from rich.console import Console

    from zoattack.cli._progress import RunProgress

    p = RunProgress(Console(file=open("/dev/null", "w")), images=10, enabled=False)  # noqa: SIM115
    p.start("square", 10_000)
    p.queries(1234)
    p.on_live(0, {"finished": 3, "fooled": 2, "attacked": 3})
    assert p.status() == "3/10 images · 2 fooled · success 67% · 1,234/10,000 queries"
    rows = [
        {"stop_reason": "success", "success": 1, "linf": 0.1, "l2": 1.0},
        {"stop_reason": "misclassified", "success": 0, "linf": 0.0, "l2": 0.0},
        {"stop_reason": "budget", "success": 0, "linf": 0.1, "l2": 2.0},
    ]
    p.rows(rows)  # the chunk ended: its rows replace its live counts
    assert p.status().startswith("3/10 images · 1 fooled · success 50%")
    d = RunProgress(Console(file=open("/dev/null", "w")), images=3, enabled=False)  # noqa: SIM115
    d.start("hsja", 300, decision_norm="l2")
    d.rows(rows)
    assert "median l2 1.5" in d.status()


def test_progress_is_silent_off_a_terminal_and_with_json(monkeypatch):
    from zoattack.cli import _progress

    monkeypatch.setattr(_progress.sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(_progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert _progress.interactive(as_json=False)
    assert not _progress.interactive(as_json=True)
    monkeypatch.setattr(_progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert not _progress.interactive(as_json=False)
    res = runner.invoke(app, ["run", *RUN, "--json"])
    assert res.exit_code == 0 and "images ·" not in res.stderr and "queries" not in res.stderr


def test_a_run_reports_live_counts_and_rows_to_its_progress(tmp_path):
    live, rows = [], []
    spec = AttackSpec(optimizer="square", images=4, budget=30, chunk_size=2, device="cpu")
    run_attack_job(
        spec, on_live=lambda chunk, counts: live.append((chunk, counts)), on_rows=rows.extend
    )
    assert live and {c for c, _ in live} <= {0, 1}
    assert all(0 <= n["fooled"] <= n["attacked"] <= n["finished"] <= 2 for _, n in live)
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3]
