"""Every resumable path survives SIGKILL at a random moment: `zoattack run` (each rule x norm),
`zoattack batch`, `zoattack defend train` and `zoattack defend certify`.

For each path: an uninterrupted reference process; then the same command line in a fresh
folder, SIGKILLed at a seeded random moment (a random point of progress, then a random delay
shorter than one chunk/epoch/image of the reference), restarted with the identical command
line (+ ``--resume`` for run/defend; a batch rerun resumes by itself) and killed again, then
resumed until it completes. The per-image rows must be byte-identical to the reference
(certify.csv without its wall-clock ``seconds`` column; the trained weights bit-identical),
and the summary totals must count at least the reference's scored inputs.

Delays scale with the reference's own working time, so kills land inside the work on a fast
or a loaded machine alike. Workloads are tiny (a few images, chunks of 2); the default
suite runs one rule per norm plus batch/train/certify, the full rule x norm sweep is ``slow``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}
TIMEOUT = 240.0  # per process; a stuck one fails the test instead of hanging the suite


# ------------------------------------------------------------------------------ the paths
@dataclass
class Resumable:
    """One resumable command: how to start it, how to resume it, what it has stored so far."""

    name: str
    argv: Callable[[Path], list[str]]  # arguments after `python -m zoattack`, given the folder
    resume: list[str]  # appended on every restart after the first start
    ready: Callable[[Path], bool]  # its first durable file exists: a kill is resumable from here
    stored: Callable[[Path], int]  # units (rows, epochs) stored so far
    touched: Callable[[Path], int]  # mtime stamp of what a (re)start writes before working
    total: int  # units stored by a complete run
    step: int = 1  # units per write (rows per chunk)


def _data_lines(path: Path) -> int:
    """Complete lines after the header of a CSV being appended to (a torn tail not counted)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _mtime(*paths: Path) -> int:
    stamps = [0]
    for p in paths:
        try:
            stamps.append(p.stat().st_mtime_ns)
        except FileNotFoundError:
            pass
    return max(stamps)


RUN_IMAGES = 6
RUN_OPTS = ["--images", str(RUN_IMAGES), "--chunk-size", "2", "--seed", "3", "--device", "cpu"]
# Small radii keep most images unbroken, so every chunk spends its whole (small) budget.
NORM_OPTS = {"linf": ["--norm", "linf", "--eps", "0.03"], "l2": ["--norm", "l2", "--eps", "0.5"]}
BUDGET = {"sign": "100", "square": "100"}  # 1-query steps: cheap per query; others 80


def run_path(rule: str, norm: str) -> Resumable:
    return Resumable(
        name=f"run-{rule}-{norm}",
        argv=lambda d: [
            "run",
            "--optimizer",
            rule,
            *NORM_OPTS[norm],
            "--budget",
            BUDGET.get(rule, "80"),
            *RUN_OPTS,
            "--out",
            str(d),
        ],
        resume=["--resume"],
        ready=lambda d: (d / "run.json").is_file(),
        stored=lambda d: _data_lines(d / "per_image.csv"),
        touched=lambda d: _mtime(d / "run.json"),
        total=RUN_IMAGES,
        step=2,
    )


PLAN = """
[defaults]
model = "small_cnn"
dataset = "fashion-mnist"
images = 4
budget = 80
chunk_size = 2
device = "cpu"
seed = 3

[[job]]
optimizer = "sign"
eps = 0.03

[[job]]
optimizer = "square"
norm = "l2"
eps = 0.5
"""


def _sqlite_rows(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or no table yet
        return 0


def batch_path(plan: Path) -> Resumable:
    return Resumable(
        name="batch",
        argv=lambda d: ["batch", str(plan), "--out", str(d)],
        resume=[],
        ready=lambda d: (d / "results.sqlite").is_file(),
        stored=lambda d: _sqlite_rows(d / "results.sqlite"),
        touched=lambda d: _mtime(d / "results.sqlite", d / "results.sqlite-wal"),
        total=8,
        step=2,
    )


TRAIN_OPTS = [
    "--model",
    "small_cnn",
    "--dataset",
    "fashion-mnist",
    "--train-images",
    "24",
    "--latent",
    "16",
    "--ae-epochs",
    "3",
    "--epochs",
    "3",
    "--batch-size",
    "6",
    "--estimator",
    "sphere",
    "-q",
    "3",
    "--denoiser-depth",
    "3",
    "--denoiser-width",
    "4",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--seed",
    "1",
]


def _epochs_stored(d: Path) -> int:
    """Epochs (both stages) in the checkpoint; read from the safetensors header only."""
    path = d / "checkpoint.safetensors"
    try:
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + n])["__metadata__"]["zoattack_state"]
        return len(json.loads(meta)["history"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


train_path = Resumable(
    name="defend-train",
    argv=lambda d: ["defend", "train", *TRAIN_OPTS, "--out", str(d)],
    resume=["--resume"],
    ready=lambda d: (d / "checkpoint.safetensors").is_file(),
    stored=_epochs_stored,
    touched=lambda d: _mtime(d / "checkpoint.safetensors"),  # train writes nothing sooner
    total=6,  # 3 autoencoder + 3 defense epochs
)

CERT_OPTS = ["--n0", "8", "--n", "200", "--images", "6", "--batch", "50", "--seed", "2"]
CERT_OPTS += ["--device", "cpu", "--threads", "1"]


def certify_path(defense: Path) -> Resumable:
    return Resumable(
        name="defend-certify",
        argv=lambda d: [
            "defend",
            "certify",
            "--defense",
            str(defense),
            *CERT_OPTS,
            "--out",
            str(d),
        ],
        resume=["--resume"],
        ready=lambda d: (d / "certify.csv").is_file(),
        stored=lambda d: _data_lines(d / "certify.csv"),
        touched=lambda d: _mtime(d / "certify.json"),
        total=6,
    )


# ------------------------------------------------------------------------ the machinery
@dataclass
class Kill:
    trigger: str
    delay: float
    outcome: str  # "killed" or "finished" (it ended before the delay ran out)
    stored_at_kill: int


@dataclass
class History:
    kills: list[Kill] = field(default_factory=list)
    resumes: int = 0

    @property
    def landed(self) -> int:
        return sum(k.outcome == "killed" for k in self.kills)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "zoattack", *argv],
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    finally:
        fh.close()


def _wait_for(proc: subprocess.Popen[bytes], cond: Callable[[], bool], log: Path) -> bool:
    """Poll until ``cond()`` (True) or the process exits (False)."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            return False
        if time.monotonic() - t0 > TIMEOUT:
            proc.kill()
            proc.wait()
            pytest.fail(f"no progress in {TIMEOUT:.0f} s:\n{log.read_text()[-2000:]}")
        time.sleep(0.005)
    return True


def _finish(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"did not finish in {TIMEOUT:.0f} s:\n{log.read_text()[-2000:]}")
    assert rc == 0, f"exit {rc}:\n{log.read_text()[-3000:]}"


def reference(path: Resumable, out: Path) -> float:
    """Run uninterrupted; returns seconds from its first durable file to its exit (the span in
    which kills are aimed)."""
    log = out.with_suffix(".log")
    proc = _spawn(path.argv(out), log)
    ready = _wait_for(proc, lambda: path.ready(out), log)
    t0 = time.monotonic()
    _finish(proc, log)
    assert ready or path.ready(out), f"{path.name} never wrote its first file"
    return max(time.monotonic() - t0, 0.05)


def kill_and_resume(path: Resumable, out: Path, span: float, kills: int) -> History:
    """Start, SIGKILL up to ``kills`` times at seeded random moments, then resume to the end.

    Each kill picks a random point of progress (a unit count between what is stored and the
    last unit), waits until the process has reached it (the first start: and written its
    first durable file; a restart: and rewritten its record, i.e. loaded and begun), then a
    random delay below one unit's time in the reference run, so it lands inside the remaining
    work however loaded the machine is. A start that finishes before its kill ends the kills;
    if no kill landed at all, the scenario starts over in a clean folder (at most 3 times).
    """
    rng = random.Random(zlib.crc32(path.name.encode()))
    unit = span * path.step / path.total
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        hist = _kills(path, out, unit, kills, rng)
        if hist.landed:
            # The identical command line once more, left alone: it must complete.
            hist.resumes += 1
            log = out.with_suffix(".log")
            _finish(_spawn(path.argv(out) + path.resume, log), log)
            return hist
    pytest.fail(f"{path.name}: no kill landed inside the work in 3 tries: {hist.kills}")


def _kills(path: Resumable, out: Path, unit: float, kills: int, rng: random.Random) -> History:
    log = out.with_suffix(".log")
    hist = History()
    for i in range(kills):
        before, stamp = path.stored(out), path.touched(out)
        # A point where a write has just happened (units come in steps), before the last one.
        lo = before // path.step
        target = path.step * rng.randint(lo, max(lo, path.total // path.step - 1))
        delay = rng.uniform(0.0, 0.7 * unit)
        if i == 0:
            trigger = f"first file, {target} stored"
            begun: Callable[[], bool] = lambda: path.ready(out)  # noqa: E731
        else:
            trigger = f"restarted, {target} stored"
            begun = lambda m=stamp: path.touched(out) != m  # noqa: E731
        proc = _spawn(path.argv(out) + (path.resume if i else []), log)
        if _wait_for(proc, lambda b=begun, t=target: b() and path.stored(out) >= t, log):
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.002)
        if proc.poll() is not None:
            _finish(proc, log)
            hist.kills.append(Kill(trigger, delay, "finished", path.stored(out)))
            return hist
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        hist.kills.append(Kill(trigger, delay, "killed", path.stored(out)))
    return hist


def _record(request: pytest.FixtureRequest, path: Resumable, hist: History) -> None:
    """Kill points go to the junit properties and to stdout (``-rA`` shows them)."""
    text = "; ".join(
        f"{k.trigger}+{k.delay:.2f}s {k.outcome} with {k.stored_at_kill} stored" for k in hist.kills
    )
    request.node.user_properties.append(("kills", text))
    print(f"{path.name}: {text}; then {hist.resumes} resume(s) to the end")
    assert hist.landed >= 1, f"{path.name}: no kill landed inside the work: {hist.kills}"


# ------------------------------------------------------------------------------ run
def _summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())["summary"]


ROW_DERIVED = (
    "images",
    "initially_correct",
    "skipped_misclassified",
    "successes",
    "success_rate",
    "mean_queries_success",
    "median_queries_success",
    "mean_queries_all",
    "median_linf_success",
    "median_l2_success",
)


def _same_examples(cut: Path, ref: Path) -> None:
    """The killed-and-resumed run's adversarial.safetensors holds what the reference's does
    (its shards merged and removed)."""
    import torch

    from zoattack.adversarial import PARTS, load_adversarial

    assert not (cut / PARTS).exists()
    got = load_adversarial(cut / "adversarial.safetensors")
    want = load_adversarial(ref / "adversarial.safetensors")
    assert got.index.tolist() == list(range(RUN_IMAGES))
    for key, value in want.tensors().items():
        if key == "x_adv":
            torch.testing.assert_close(got.x_adv, value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(got.tensors()[key], value), key


def check_run(path: Resumable, tmp_path: Path, request: pytest.FixtureRequest, kills: int) -> None:
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    span = reference(path, ref)
    hist = kill_and_resume(path, cut, span, kills)
    _record(request, path, hist)
    assert (cut / "per_image.csv").read_bytes() == (ref / "per_image.csv").read_bytes()
    assert json.loads((cut / "run.json").read_text())["status"] == "finished"
    _same_examples(cut, ref)
    got, want = _summary(cut), _summary(ref)
    assert {k: got[k] for k in ROW_DERIVED} == {k: want[k] for k in ROW_DERIVED}
    # Every part's scored inputs count (issue 10; the results branch makes scored_inputs the
    # whole job's): at least the reference's, more only for work lost in a killed chunk.
    assert got["scored_inputs"] >= want["scored_inputs"], (got["scored_inputs"], hist)
    if all(k.stored_at_kill == RUN_IMAGES for k in hist.kills if k.outcome == "killed"):
        # Every kill came after the last row was stored: no work was in flight, none redone.
        assert got["scored_inputs"] == want["scored_inputs"]


SEARCH = [("sign", "linf"), ("square", "l2")]
GRADIENT = [
    (rule, norm)
    for rule in ("zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")
    for norm in ("linf", "l2")
]
SWEEP = [("square", "linf"), *GRADIENT]


@pytest.mark.parametrize(("rule", "norm"), SEARCH, ids=[f"{r}-{n}" for r, n in SEARCH])
def test_run_survives_sigkill(rule, norm, tmp_path, request):
    check_run(run_path(rule, norm), tmp_path, request, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "norm"), SWEEP, ids=[f"{r}-{n}" for r, n in SWEEP])
def test_run_survives_sigkill_every_rule_and_norm(rule, norm, tmp_path, request):
    check_run(run_path(rule, norm), tmp_path, request, kills=3)


# ---------------------------------------------------------------------------- batch
def _store(db: Path) -> tuple[list[tuple], list[tuple]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(rows)")]
        quoted = ", ".join(f'"{c}"' for c in cols)
        rows = con.execute(f'SELECT {quoted} FROM rows ORDER BY job, "index"').fetchall()
        jobs = con.execute("SELECT key, status, scored_inputs FROM jobs ORDER BY key").fetchall()
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return rows, jobs


def test_batch_survives_sigkill(tmp_path, request):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    path = batch_path(plan)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    span = reference(path, ref)
    hist = kill_and_resume(path, cut, span, kills=2)
    _record(request, path, hist)
    got_rows, got_jobs = _store(cut / "results.sqlite")
    want_rows, want_jobs = _store(ref / "results.sqlite")
    assert len(want_rows) == 8
    # Same values, same SQLite types: repr tells 1 from 1.0, so this is byte-for-byte data.
    assert repr(got_rows) == repr(want_rows)
    assert [(k, s) for k, s, _ in got_jobs] == [(k, "finished") for k, _, _ in want_jobs]
    assert sum(q for *_, q in got_jobs) >= sum(q for *_, q in want_jobs)


# ---------------------------------------------------------------------- defend train
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted reference defense (also what certify certifies) and its span."""
    ref = tmp_path_factory.mktemp("defense") / "ref"
    return ref, reference(train_path, ref)


def _weights(path: Path) -> dict[str, bytes]:
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def _without_seconds(card: dict) -> dict:
    card = {k: v for k, v in card.items() if k != "train_seconds"}
    card["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in card["history"]]
    return card


def test_defend_train_survives_sigkill(trained, tmp_path, request):
    ref, span = trained
    cut = tmp_path / "cut"
    hist = kill_and_resume(train_path, cut, span, kills=2)
    _record(request, train_path, hist)
    assert _weights(cut / "defense.safetensors") == _weights(ref / "defense.safetensors")
    got = json.loads((cut / "defense.json").read_text())
    want = json.loads((ref / "defense.json").read_text())
    assert got["complete"] and got["epochs_done"] == want["epochs_done"] == 3
    q_got, q_want = got.pop("queries"), want.pop("queries")
    assert q_got["train_blackbox"] >= q_want["train_blackbox"]
    assert _without_seconds(got) == _without_seconds(want)


# --------------------------------------------------------------------- defend certify
def _csv_without(path: Path, column: str) -> bytes:
    """The CSV's bytes with one column removed (certify.csv's wall-clock ``seconds``)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    drop = rows[0].index(column)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        [c for j, c in enumerate(r) if j != drop] for r in rows
    )
    return buf.getvalue().encode()


def test_defend_certify_survives_sigkill(trained, tmp_path, request):
    defense, _ = trained
    path = certify_path(defense)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    span = reference(path, ref)
    hist = kill_and_resume(path, cut, span, kills=2)
    _record(request, path, hist)
    got_csv, want_csv = (
        _csv_without(cut / "certify.csv", "seconds"),
        _csv_without(ref / "certify.csv", "seconds"),
    )
    assert got_csv.count(b"\n") == 7  # header + 6 images
    assert got_csv == want_csv
    got = json.loads((cut / "certify.json").read_text())
    want = json.loads((ref / "certify.json").read_text())
    assert got["complete"] and got["certified_accuracy"] == want["certified_accuracy"]
    assert got["queries"]["certify_blackbox"] >= want["queries"]["certify_blackbox"]
