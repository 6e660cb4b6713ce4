#!/usr/bin/env python
"""Defense benchmark: certified accuracy of FO-DS, ZO-DS and ZO-AE-DS (RGE q=20, CGE) on
Fashion-MNIST with the bundled ``small_cnn`` victim as the black box, sigma 0.25.

What it runs (every number comes from this run):

* Data: only the first 1,000 Fashion-MNIST test images ship offline, so every method trains on
  images 0..``--train-images``-1 (default 800) and is certified on ``--cert-images`` images
  spread evenly over the disjoint rest (default 30 of images 800..999, every 6th).
* Training (library ``train_defense``, same seed for all): AE methods pretrain the autoencoder
  ``--ae-epochs`` (100) epochs (white-box MSE, no queries), then ``--epochs`` stage-2 epochs
  (default 6 for every method; the paper runs hundreds: this is the CPU-sized version) with
  Adam lr 1e-3, batch 64, stability loss vs the black box's own top-1. fo-ds backpropagates
  through the model (white-box reference); zo-ds uses RGE (q=20) over the 784 pixels; zo-ae-ds
  uses RGE (q=20) or full forward CGE over the 128-d latent.
* Certification: Cohen et al. CERTIFY with N0=100, N=10,000, alpha=0.001 (max certifiable
  radius 0.80), label queries only; certified accuracy at r = 0, 0.25, 0.5, 0.75 (radius >= r).
* Queries: black-box training queries (ledger) and white-box forward/backward passes (fo-ds)
  reported separately from certification queries.

Run: ``python benchmarks/defense.py`` (about 30 min on 2 CPU cores when the machine is
otherwise idle) or ``--quick`` (tiny sizes, a minute or two, checks the pipeline only).
Results: a table on stdout, ``OUT/results.json``, ``OUT/certified_accuracy.png``; re-running
with the same ``--out`` reuses finished trainings and certifications (``--fresh`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from _common import metadata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoattack.blackbox import BlackBox  # noqa: E402
from zoattack.data import load_dataset  # noqa: E402
from zoattack.defense.certify import (  # noqa: E402
    Smooth,
    blackbox_classifier,
    save_curve,
    summarize,
)
from zoattack.defense.model import load_front  # noqa: E402
from zoattack.defense.train import DefenseConfig, train_defense  # noqa: E402
from zoattack.jobs.certify import certify_images, read_rows  # noqa: E402
from zoattack.models import create_model  # noqa: E402

METHODS = {
    "fo-ds": {"method": "fo-ds"},
    "zo-ds-rge20": {"method": "zo-ds", "estimator": "sphere", "samples": 20},
    "zo-ae-ds-rge20": {"method": "zo-ae-ds", "estimator": "sphere", "samples": 20},
    "zo-ae-ds-cge": {"method": "zo-ae-ds", "estimator": "coordinate", "samples": None},
    "fo-ae-ds": {"method": "fo-ae-ds"},
}
DEFAULT_METHODS = ["fo-ds", "zo-ds-rge20", "zo-ae-ds-rge20", "zo-ae-ds-cge"]
RADII = (0.0, 0.25, 0.5, 0.75)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--cert-images", type=int, default=30)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--ae-epochs", type=int, default=100)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/defense"))
    p.add_argument("--fresh", action="store_true", help="redo finished runs in --out")
    a = p.parse_args()
    if a.quick:
        a.train_images, a.cert_images, a.epochs, a.ae_epochs, a.n0, a.n = 96, 4, 1, 10, 20, 500
        a.out = a.out.with_name(a.out.name + "-quick")
    torch.set_num_threads(a.threads)
    if a.fresh and a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True, exist_ok=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset("fashion-mnist", split="test", limit=1000)
    rest = list(range(a.train_images, len(data)))
    step = max(1, len(rest) // a.cert_images)
    cert_idx = rest[::step][: a.cert_images]
    train_x = data.images[: a.train_images]
    model = create_model("small_cnn", dataset="fashion-mnist", pretrained=True)
    print(
        f"black box: small_cnn (bundled); train images 0..{a.train_images - 1}; certify "
        f"{len(cert_idx)} images {cert_idx[0]}..{cert_idx[-1]} step {step}; sigma {a.sigma}, "
        f"N0 {a.n0}, N {a.n}, alpha {a.alpha}; epochs {a.epochs} (AE {a.ae_epochs}); "
        f"{a.threads} thread(s)",
        flush=True,
    )

    results = {}
    curves = {}
    for name in a.methods:
        d = a.out / name
        cfg = DefenseConfig(
            **METHODS[name], sigma=a.sigma, epochs=a.epochs, ae_epochs=a.ae_epochs, seed=a.seed
        )
        card_path = d / "defense.json"
        if card_path.is_file() and json.loads(card_path.read_text()).get("complete"):
            card = json.loads(card_path.read_text())
        else:
            bb = BlackBox(model, output="logits", input_shape=data.image_shape)
            t0 = time.perf_counter()
            card = train_defense(
                cfg,
                bb,
                train_x,
                d,
                white_box=model,
                resume=(d / "checkpoint.safetensors").exists(),
                record={
                    "blackbox": {
                        "model": "small_cnn",
                        "dataset": "fashion-mnist",
                        "weights": None,
                        "output": "logits",
                        "num_classes": 10,
                    },
                    "data": {
                        "dataset": "fashion-mnist",
                        "split": "test",
                        "source": data.source,
                        "start": 0,
                        "count": a.train_images,
                    },
                    "classes": data.classes,
                },
                on_epoch=lambda r, n=name: (
                    r["stage"] == 2
                    and print(
                        f"  {n} epoch {r['epoch']}: loss {r['loss']:.4f}, "
                        f"{r['queries']:,} queries, {r['seconds']:.0f} s",
                        flush=True,
                    )
                ),
            )
            print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        front, _ = load_front(d)
        cbb = BlackBox(model, output="labels", input_shape=data.image_shape, max_batch=1000)
        smooth = Smooth(blackbox_classifier(cbb, front), 10, a.sigma, batch=1000)
        csv_path = d / f"certify-n{a.n}.csv"
        done = read_rows(csv_path) if csv_path.is_file() else []
        t0 = time.perf_counter()
        rows = certify_images(
            smooth,
            data.images[cert_idx],
            data.labels[cert_idx],
            cert_idx,
            csv_path,
            n0=a.n0,
            n=a.n,
            alpha=a.alpha,
            seed=a.seed,
            blackbox=cbb,
            resume=bool(done),
        )
        rows = [r for r in rows if r["index"] in set(cert_idx)]
        summ = summarize(rows, RADII)
        curves[name] = rows
        train_s = card["train_seconds"]
        results[name] = {
            "method": cfg.method,
            "estimator": cfg.estimator if cfg.zeroth_order else "backprop",
            "samples": cfg.samples,
            "certified_accuracy": summ["certified_accuracy"],
            "abstained": summ["abstained"],
            "train_queries_blackbox": card["queries"]["train_blackbox"],
            "train_whitebox_evaluations": card["queries"]["whitebox_evaluations"],
            "certify_queries": summ["queries"],
            "train_seconds": train_s,
            "certify_seconds": summ["seconds"],
            "images": len(rows),
        }
        ca = summ["certified_accuracy"]
        print(
            f"{name}: CA "
            + " ".join(f"{100 * v:.1f}" for v in ca.values())
            + f" ({time.perf_counter() - t0:.0f} s certifying)",
            flush=True,
        )
        (a.out / "results.json").write_text(
            json.dumps(
                {
                    "meta": metadata(),
                    "settings": vars(a) | {"out": str(a.out), "cert_indices": cert_idx},
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )

    save_curve(a.out / "certified_accuracy.png", curves, a.sigma)
    ref = results.get("fo-ds")
    head = (
        f"{'method':<16}"
        + "".join(f"{'CA@' + str(r):>9}" for r in RADII)
        + f"{'train q (bb)':>14}{'wb evals':>10}{'cert q':>11}{'train s':>9}{'cert s':>8}"
        + (f"{'CA.25/fo-ds':>12}{'q/fo-ds':>9}" if ref else "")
    )
    print("\n" + head)
    for name, r in results.items():
        ca = list(r["certified_accuracy"].values())
        line = (
            f"{name:<16}"
            + "".join(f"{100 * v:>9.1f}" for v in ca)
            + f"{r['train_queries_blackbox']:>14,}{r['train_whitebox_evaluations']:>10,}"
            + f"{r['certify_queries']:>11,}{r['train_seconds']:>9.0f}"
            + f"{r['certify_seconds']:>8.0f}"
        )
        if ref:
            base_ca = ref["certified_accuracy"]["0.25"]
            base_q = ref["train_queries_blackbox"] + ref["train_whitebox_evaluations"]
            mine_q = r["train_queries_blackbox"] + r["train_whitebox_evaluations"]
            line += (
                f"{(r['certified_accuracy']['0.25'] / base_ca if base_ca else float('nan')):>12.2f}"
                f"{mine_q / base_q:>9.1f}"
            )
        print(line)
    zo_ds = results.get("zo-ds-rge20")
    for name in ("zo-ae-ds-cge", "zo-ae-ds-rge20"):
        if name in results and ref and zo_ds:
            v = 100 * results[name]["certified_accuracy"]["0.25"]
            f = 100 * ref["certified_accuracy"]["0.25"]
            z = 100 * zo_ds["certified_accuracy"]["0.25"]
            print(
                f"targets for {name} at r=0.25: within 5 pts of fo-ds ({v:.1f} vs {f:.1f}: "
                f"{'met' if v >= f - 5 else 'NOT met'}); >= 15 pts above zo-ds ({v:.1f} vs "
                f"{z:.1f}: {'met' if v >= z + 15 else 'NOT met'})"
            )
    print(f"wrote {a.out / 'results.json'} and {a.out / 'certified_accuracy.png'}")


if __name__ == "__main__":
    main()
