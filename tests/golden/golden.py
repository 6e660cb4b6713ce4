"""Golden runs: the rows, ledgers and summaries of small end-to-end jobs, through the CLI only
(the surface a refactor must keep). `python tests/golden/golden.py --write` records them in
golden.json; tests/test_golden.py re-runs them and compares field by field.

Covered: every attack rule x norm it supports (per-image), a universal run, a batch plan, a
defend train + certify, and a remote run against an in-process server.
"""

from __future__ import annotations

import argparse
import csv
import json
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


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
            out[name] = json.loads(json.dumps(PARTS[name](sub)))
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
    bad = [k for k in got if got[k] != want.get(k)]
    print("identical" if not bad else f"DIFFERENT: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
