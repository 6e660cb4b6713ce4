"""Golden runs: the rows, ledgers and summaries of small end-to-end jobs, through the CLI only
(the surface a refactor must keep). `python tests/golden/golden.py --write` records them in
golden.json; tests/test_golden.py re-runs them and compares field by field with :func:`compare`:
integers, labels, queries, stop reasons and success exactly, floats within a relative tolerance,
because golden.json is recorded on one CPU and checked on others (see the tolerances below).

Covered: every attack rule x norm it supports (per-image), a universal run, a batch plan, a
defend train + certify, and a remote run against an in-process server.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
# Wall-clock and machine fields: everything else must match exactly.
VOLATILE = {
    "wall_seconds",
    "scored_inputs_per_second",
    "seconds",
    "zoattack",
    "torch",
    "data_source",
    "device",
    "created",
    "started",
    "finished",
    "updated",
    "host",
    "elapsed",
    "images_per_second",
    "train_seconds",
    "certify_seconds",
    "path",
    "out",
    "pid",
    "versions",
    "python",
    "platform",
    "duration",
}
RULES = {
    "sign": ("linf",),
    "square": ("linf", "l2"),
    "zo_sgd": ("linf", "l2"),
    "zo_signsgd": ("linf", "l2"),
    "zo_adamm": ("linf", "l2"),
    "radazo": ("linf", "l2"),
    "lizo": ("linf", "l2"),
}
# Tolerances. Floats move between CPUs: torch picks other kernels (AVX-512, AVX2, or plain code
# under ATEN_CPU_CAPABILITY=default; MKL/oneDNN differ by vendor), which sum in another order.
# Measured spread, max relative difference of one value, per part (Dec 2026, on an AMD EPYC
# whose default capability is AVX512; golden.json recorded on another x86 machine):
#   part       native vs ATEN default   native vs avx2   recorded machine vs this one
#   attacks    4.5e-3 (zo_adamm/l2 linf)   0               1.1e-1 (zo_signsgd/l2 linf; l2 3.3e-2)
#   batch      0                           0               6.0e-7 (one row's l2, last digit)
#   defend     3.4e-6 (the ZO-stage loss)  0               2.6e-7 (the same loss)
#   remote     0                           0               0
#   universal  0                           0               0
# Every discrete field (labels, predictions, success, queries, stop reasons, certified
# predictions) was identical in all of them. The distances a search reaches drift most: a
# signSGD step moves every coordinate by +-lr, so one sign that flips on a rounding difference of
# a finite difference moves the iterate by a whole step, and an l2 attack's linf is the largest
# coordinate, quantised in such steps. One row's distance therefore gets a loose tolerance that
# catches gross errors (a wrong radius, a missing projection), and the mean distance of a run's
# rows, which such flips barely move (measured 2.0e-2 at most: zo_signsgd/l2 linf; 8.8e-3 its
# l2; under 3e-3 every other run), a tight one. Every other float (losses, rates, radii, counts
# averaged) agreed to 3.4e-6, and gets 30 times that. The distance tolerances are 2.4x (a row)
# and 2.5x (a run's mean) the largest drift measured between two machines.
DISTANCE_RTOL = 0.25
DISTANCE_MEAN_RTOL = 0.05
FLOAT_RTOL = 1e-4
# CSV rows carry 6 decimals: half a unit in the last place either side.
ATOL = 1.5e-6
# The distances reached by a search: a row's l2/linf, their medians, the universal delta's sums.
DISTANCE = re.compile(r"(^|_)(l2|linf)(_|$)|distance|^delta_")
# golden.json keeps 7 significant digits (about float32's precision), so a value computed in
# float32 on one machine and float64 on another is recorded alike.
DIGITS = 7
COMMON = ["--images", "8", "--budget", "60", "--chunk-size", "5", "--seed", "3", "--device", "cpu"]


def _scrub(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def _invoke(args: list[str]) -> str:
    from zoattack.cli.main import app

    res = CliRunner().invoke(app, args)
    if res.exit_code != 0:
        raise RuntimeError(f"zoattack {' '.join(args)} -> exit {res.exit_code}\n{res.output}")
    return res.stdout


def _value(text: str) -> Any:
    """A CSV cell as the number it holds (int when integral text, else float), else the text."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def normalise(obj: Any) -> Any:
    """Floats to DIGITS significant digits (a float32 value and its float64 twin alike)."""
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.{DIGITS}g}")
    return obj


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _close(got: float, want: float, rtol: float) -> bool:
    return abs(got - want) <= ATOL + rtol * max(abs(got), abs(want))


def _mean_distances(rows: list[Any]) -> dict[tuple[Any, str], float]:
    """The mean of each distance column over the rows of each job (one job when no "job")."""
    sums: dict[tuple[Any, str], list[float]] = {}
    for r in rows:
        if not isinstance(r, dict):
            return {}
        for k, v in r.items():
            if DISTANCE.search(k) and _is_number(v):
                sums.setdefault((r.get("job"), k), []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def compare(got: Any, want: Any, where: str = "", key: str = "") -> list[str]:
    """What differs between a run and its golden record beyond the tolerances; [] if nothing.

    Integers (labels, predictions, queries, success, counts), strings, booleans and None
    compare exactly, type included; floats within DISTANCE_RTOL (a distance), else FLOAT_RTOL,
    and each distance column's mean over a run's rows within DISTANCE_MEAN_RTOL.
    """
    if isinstance(got, dict) and isinstance(want, dict):
        diffs = []
        for k in sorted(set(got) | set(want)):
            if k not in got or k not in want:
                diffs.append(f"{where}/{k}: only in {'golden' if k in want else 'this run'}")
                continue
            diffs += compare(got[k], want[k], f"{where}/{k}", k)
        rows_g, rows_w = got.get("rows"), want.get("rows")
        if isinstance(rows_g, list) and isinstance(rows_w, list):
            mean_g, mean_w = _mean_distances(rows_g), _mean_distances(rows_w)
            for col in sorted(set(mean_g) & set(mean_w), key=str):
                if not _close(mean_g[col], mean_w[col], DISTANCE_MEAN_RTOL):
                    diffs.append(
                        f"{where}/rows: mean {col[1]} {mean_g[col]:.6g} vs golden "
                        f"{mean_w[col]:.6g} (rtol {DISTANCE_MEAN_RTOL})"
                    )
        return diffs
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items vs golden {len(want)}"]
        return [
            d
            for i, (g, w) in enumerate(zip(got, want))
            for d in compare(g, w, f"{where}[{i}]", key)
        ]
    if _is_number(got) and _is_number(want):
        if isinstance(got, int) or isinstance(want, int):  # an integer field stays one
            return (
                []
                if type(got) is type(want) and got == want
                else [f"{where}: {got!r} vs golden {want!r}"]
            )
        rtol = DISTANCE_RTOL if DISTANCE.search(key) else FLOAT_RTOL
        if math.isfinite(got) and math.isfinite(want) and _close(got, want, rtol):
            return []
        if not (math.isfinite(got) or math.isfinite(want)) and str(got) == str(want):
            return []
        return [f"{where}: {got!r} vs golden {want!r} (rtol {rtol})"]
    if type(got) is not type(want) or got != want:
        return [f"{where}: {got!r} vs golden {want!r}"]
    return []


def _run(out: Path, extra: list[str]) -> dict[str, Any]:
    _invoke(["run", *COMMON, *extra, "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    return {"rows": _csv(out / "per_image.csv"), "summary": _scrub(summary)}


def attacks(tmp: Path) -> dict[str, Any]:
    res = {}
    for rule, norms in RULES.items():
        for norm in norms:
            res[f"{rule}/{norm}"] = _run(
                tmp / f"{rule}-{norm}", ["--optimizer", rule, "--norm", norm]
            )
    return res


def universal(tmp: Path) -> dict[str, Any]:
    out = tmp / "universal"
    _invoke(
        [
            "run",
            "--universal",
            "--optimizer",
            "zo_signsgd",
            "--images",
            "8",
            "--budget",
            "40",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    from safetensors.torch import load_file

    delta = load_file(str(out / "delta.safetensors"))["delta"]
    return {
        "summary": _scrub(json.loads((out / "summary.json").read_text())),
        "delta_sum": round(float(delta.double().sum()), 8),
        "delta_abs_sum": round(float(delta.double().abs().sum()), 8),
    }


def batch(tmp: Path) -> dict[str, Any]:
    plan = tmp / "plan.toml"
    plan.write_text(
        "[defaults]\nmodel = 'small_cnn'\nimages = 6\nbudget = 40\nchunk_size = 4\n"
        "device = 'cpu'\n[grid]\noptimizer = ['sign', 'zo_adamm']\nseed = [0, 1]\n"
        "[[job]]\nnorm = 'l2'\noptimizer = 'square'\n"
    )
    _invoke(["batch", str(plan), "--out", str(tmp / "batch")])
    db = sqlite3.connect(tmp / "batch" / "results.sqlite")
    db.row_factory = sqlite3.Row
    jobs = {
        r["key"]: f"{r['position']}:{r['label']}"
        for r in db.execute("select key, position, label from jobs")
    }
    rows = [dict(r) for r in db.execute('select * from rows order by job, "index"')]
    db.close()
    for r in rows:
        r["job"] = jobs[r["job"]]  # keys hash the settings; position and label name the job
    rows.sort(key=lambda r: (r["job"], r["index"]))
    return {"rows": rows, "count": len(rows)}


def defend(tmp: Path) -> dict[str, Any]:
    d = tmp / "def"
    _invoke(
        [
            "defend",
            "train",
            "--model",
            "small_cnn",
            "--dataset",
            "fashion-mnist",
            "--train-images",
            "24",
            "--latent",
            "16",
            "--ae-epochs",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "12",
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
            "--out",
            str(d),
        ]
    )
    card = json.loads((d / "defense.json").read_text())
    _invoke(
        [
            "defend",
            "certify",
            "--defense",
            str(d),
            "--n0",
            "8",
            "--n",
            "60",
            "--images",
            "3",
            "--batch",
            "64",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            str(tmp / "cert"),
        ]
    )
    rows = [
        {k: v for k, v in r.items() if k != "seconds"} for r in _csv(tmp / "cert" / "certify.csv")
    ]
    cert = json.loads((tmp / "cert" / "certify.json").read_text())
    return {
        "train_queries": card["queries"],
        "losses": _scrub(card.get("history")),
        "cert_rows": rows,
        "certified_accuracy": cert["certified_accuracy"],
        "cert_queries": cert["queries"],
    }


def remote(tmp: Path) -> dict[str, Any]:
    from zoattack.data import load_dataset
    from zoattack.models import create_model
    from zoattack.remote.server import BackgroundServer, create_app

    data = load_dataset("fashion-mnist", split="test", limit=8)
    model = create_model("small_cnn", dataset=data, pretrained=True, device="cpu")
    server = BackgroundServer(
        create_app(model, input_shape=(1, 28, 28), num_classes=10), port=0
    ).start()
    try:
        res = _run(tmp / "remote", ["--model", f"remote:{server.url}"])
    finally:
        server.stop()
    res["summary"]["settings"]["model"] = "remote:URL"  # a free port, new each run
    return res


PARTS = {
    "attacks": attacks,
    "universal": universal,
    "batch": batch,
    "defend": defend,
    "remote": remote,
}


def collect(parts: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as t:
        for name in parts or list(PARTS):
            sub = Path(t) / name
            sub.mkdir()
            out[name] = normalise(json.loads(json.dumps(PARTS[name](sub))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="record golden.json")
    ap.add_argument("--parts", nargs="*", choices=list(PARTS))
    args = ap.parse_args()
    got = collect(args.parts)
    if args.write:
        # --parts re-records only those parts and keeps the others.
        old = json.loads(GOLDEN.read_text()) if args.parts and GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**old, **got}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
        return
    want = json.loads(GOLDEN.read_text())
    diffs = [d for k in got for d in compare(got[k], want.get(k), k)]
    print("\n".join(diffs) if diffs else "within tolerance of the golden runs")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
