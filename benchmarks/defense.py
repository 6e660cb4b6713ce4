#!/usr/bin/env python
"""Defense benchmark: certified accuracy of FO-DS, ZO-DS and ZO-AE-DS (RGE q=20, CGE) at
784 inputs (Fashion-MNIST 1x28x28) or 3,072 inputs (the same images seen as 3x32x32, CIFAR-10's
input size), sigma 0.25: does the autoencoder rescue ZO training in high dimension, as the paper
(Zhang et al., ICLR 2022) finds on CIFAR-10?

What it runs (every number comes from this run):

* Data: ``--dim 784`` is ``fashion-mnist``, ``--dim 3072`` the view ``fashion-mnist@3x32x32``
  (bilinear resize, grey repeated to RGB; see zoattack.data.views). Training images are the
  first ``--train-images`` of the *train* split (Debian's ``dataset-fashion-mnist``; `make data`
  installs it); certified images are the first ``--cert-images`` of the *test* split, so the
  two never overlap. Without the train split it falls back to the bundled test images
  (training on 0..train-1, certifying the next ones) and says so.
* Black box: ``--model`` (default resnet20). 784: the shipped ``resnet20`` weights; 3072: weights
  trained on the view by ``zoattack train`` (``--victim-weights``; trained here with the command
  in VICTIM_TRAIN when the file is missing).
* Training (library ``train_defense``, same seed for every method): AE methods pretrain the
  autoencoder (``--ae-epochs``, white-box MSE, no queries); then ``--epochs`` stage-2 epochs with
  Adam (lr ``--lr``), the stability loss against the black box's own top-1. fo-ds backpropagates
  through the model (white-box reference); zo-ds: RGE (q=20) over the C*H*W pixels; zo-ae-ds:
  RGE (q=20) or full forward CGE over the latent (128-d ``small`` AE at 784, the paper's 192-d
  ``cifar`` AE at 3072). Denoiser: DnCNN ``--denoiser-depth`` x ``--denoiser-width``
  (default per image size: 5x16 at 28x28, the paper's 17x64 at 32x32).
* Certification: Cohen et al. CERTIFY, N0 ``--n0``, N ``--n``, alpha ``--alpha``, label queries
  only, ``--group`` images per black-box call; certified accuracy at r = 0, 0.25, 0.5, 0.75
  (radius >= r) with its binomial standard error sqrt(p(1-p)/n); the largest radius N draws can
  certify is printed (0.80 for N = 10,000; radii above it read 0 by construction).
* Queries: black-box training queries (ledger) and white-box forward/backward passes (fo-ds)
  reported separately from certification queries; certification images/s and queries per
  certified image.

Full size (the issue's; hours on a GPU-less 2-core box):
``python benchmarks/defense.py --dim 3072 --train-images 10000 --epochs 20 --cert-images 100``
(and ``--dim 784``). ``--quick`` checks the pipeline only. Results: a table on stdout,
``OUT/results.json``, ``OUT/certified_accuracy.png``; re-running with the same ``--out`` reuses
finished trainings and certifications (``--fresh`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from _common import metadata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoattack.blackbox import BlackBox  # noqa: E402
from zoattack.data import MissingFileError, load_dataset  # noqa: E402
from zoattack.defense.certify import (  # noqa: E402
    Smooth,
    blackbox_classifier,
    max_radius,
    save_curve,
    summarize,
)
from zoattack.defense.model import load_front  # noqa: E402
from zoattack.defense.train import DefenseConfig, train_defense  # noqa: E402
from zoattack.jobs.certify import certify_images, read_rows, throughput  # noqa: E402
from zoattack.models import create_model  # noqa: E402
from zoattack.models.weights import weights_dir, weights_filename  # noqa: E402

METHODS = {
    "fo-ds": {"method": "fo-ds"},
    "zo-ds-rge20": {"method": "zo-ds", "estimator": "sphere", "samples": 20},
    "zo-ae-ds-rge20": {"method": "zo-ae-ds", "estimator": "sphere", "samples": 20},
    "zo-ae-ds-cge": {"method": "zo-ae-ds", "estimator": "coordinate", "samples": None},
    "fo-ae-ds": {"method": "fo-ae-ds"},
}
DEFAULT_METHODS = ["fo-ds", "zo-ds-rge20", "zo-ae-ds-rge20", "zo-ae-ds-cge"]
RADII = (0.0, 0.25, 0.5, 0.75)
DATASETS = {784: "fashion-mnist", 3072: "fashion-mnist@3x32x32"}
# How the 3x32x32 victim is made when --victim-weights is missing (a few minutes per epoch on
# 1 CPU thread; the card next to the weights records the recipe and test accuracy).
VICTIM_TRAIN = [
    "train",
    "--model",
    "{model}",
    "--dataset",
    "{dataset}",
    "--limit",
    "20000",
    "--epochs",
    "3",
    "--threads",
    "1",
    "--test-limit",
    "2000",
    "--out",
    "{out}",
]


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _victim(a: argparse.Namespace, dataset: str):
    if a.victim_weights is None and (weights_dir() / weights_filename(a.model, dataset)).is_file():
        # Both sizes ship a victim (the 3x32x32 one made with VICTIM_TRAIN's command).
        return create_model(a.model, dataset=dataset, pretrained=True), f"shipped {a.model}"
    path = a.victim_weights or a.out / "victim" / f"{a.model}_{dataset}.safetensors"
    if not Path(path).is_file():
        cmd = [w.format(model=a.model, dataset=dataset, out=path) for w in VICTIM_TRAIN]
        print("training the victim: zoattack " + " ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "zoattack", *cmd], check=True, cwd=ROOT)
    card = Path(path).with_suffix(".json")
    acc = json.loads(card.read_text()).get("test_accuracy") if card.is_file() else None
    return create_model(a.model, dataset=dataset, weights=str(path)), (
        f"{path} (test accuracy {acc})"
    )


def _data(a: argparse.Namespace, dataset: str):
    """Training images, certified images (and their indices), and the record of the splits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = load_dataset(dataset, split="test", limit=max(1000, a.cert_images))
        try:
            train = load_dataset(dataset, split="train", limit=a.train_images)
            cert_idx = list(range(a.cert_images))
            split = {
                "train": f"train split images 0..{len(train) - 1} ({train.source})",
                "certify": f"test split images 0..{a.cert_images - 1} ({test.source})",
                "train_split": "train",
            }
        except MissingFileError:
            train = test.head(a.train_images)
            rest = list(range(a.train_images, len(test)))
            step = max(1, len(rest) // a.cert_images)
            cert_idx = rest[::step][: a.cert_images]
            split = {
                "train": f"TEST split images 0..{a.train_images - 1} (no train split offline)",
                "certify": f"test split images {cert_idx[0]}..{cert_idx[-1]} step {step}",
                "train_split": "test",
            }
    return train, test, cert_idx, split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, choices=sorted(DATASETS), default=784)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--victim-weights", type=Path, default=None)
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--cert-images", type=int, default=100)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--ae-epochs", type=int, default=30)
    p.add_argument(
        "--ae-images",
        type=int,
        default=None,
        help="pretrain the autoencoder (white-box, no queries) on the first N train images "
        "(default: the training images)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--denoiser-depth", type=int, default=None)
    p.add_argument("--denoiser-width", type=int, default=None)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=1000, help="noisy copies per image per call")
    p.add_argument("--group", type=int, default=None, help="images per call (default fills batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--fresh", action="store_true", help="redo finished runs in --out")
    a = p.parse_args()
    dataset = DATASETS[a.dim]
    if a.out is None:
        a.out = Path(f"benchmarks/results/defense-{a.dim}")
    if a.quick:
        a.train_images, a.cert_images, a.epochs, a.ae_epochs, a.n0, a.n = 32, 4, 1, 2, 10, 100
        a.out = a.out.with_name(a.out.name + "-quick")
    group = a.group or max(1, a.batch // max(a.n, 1))
    torch.set_num_threads(a.threads)
    if a.fresh and a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True, exist_ok=True)

    train, test, cert_idx, split = _data(a, dataset)
    ae_x = None
    if a.ae_images is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ae_x = load_dataset(dataset, split=split["train_split"], limit=a.ae_images).images
        split["autoencoder"] = f"{split['train_split']} split images 0..{len(ae_x) - 1}"
    model, victim = _victim(a, dataset)
    victim_path = str(a.victim_weights or a.out / "victim" / f"{a.model}_{dataset}.safetensors")
    shape = train.image_shape
    print(
        f"dim {a.dim} ({dataset}, {'x'.join(map(str, shape))}); black box {a.model}: {victim}\n"
        f"train: {split['train']}; certify: {split['certify']}\n"
        f"sigma {a.sigma}, N0 {a.n0}, N {a.n}, alpha {a.alpha} (max certifiable radius "
        f"{max_radius(a.sigma, a.n, a.alpha):.3f}); epochs {a.epochs} (AE {a.ae_epochs}), batch "
        f"{a.batch_size}, lr {a.lr:g}; {a.threads} thread(s), {group} image(s) per call"
        + (f"; autoencoder pretrained on {split['autoencoder']}" if ae_x is not None else ""),
        flush=True,
    )

    results = {}
    curves = {}
    for name in a.methods:
        d = a.out / name
        cfg = DefenseConfig(
            **METHODS[name],
            sigma=a.sigma,
            epochs=a.epochs,
            ae_epochs=a.ae_epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            denoiser_depth=a.denoiser_depth,
            denoiser_width=a.denoiser_width,
            seed=a.seed,
        )
        card_path = d / "defense.json"
        if card_path.is_file() and json.loads(card_path.read_text()).get("complete"):
            card = json.loads(card_path.read_text())
        else:
            bb = BlackBox(model, output="logits", input_shape=shape)
            t0 = time.perf_counter()
            card = train_defense(
                cfg,
                bb,
                train.images,
                d,
                white_box=model,
                resume=(d / "checkpoint.safetensors").exists(),
                record={
                    "blackbox": {
                        "model": a.model,
                        "dataset": dataset,
                        "weights": None if victim.startswith("shipped") else victim_path,
                        "output": "logits",
                        "num_classes": 10,
                    },
                    "data": {
                        "dataset": dataset,
                        "split": split["train_split"],
                        "source": train.source,
                        "start": 0,
                        "count": len(train),
                    },
                    "classes": train.classes,
                },
                ae_images=ae_x,
                on_epoch=lambda r, n=name: (
                    print(
                        f"  {n} {'AE ' if r['stage'] == 1 else ''}epoch {r['epoch']}: loss "
                        f"{r['loss']:.4f}, {r['queries']:,} queries, {r['seconds']:.0f} s",
                        flush=True,
                    )
                    if r["stage"] == 2 or r["epoch"] == a.ae_epochs
                    else None
                ),
            )
            print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        front, _ = load_front(d)
        cbb = BlackBox(model, output="labels", input_shape=shape, max_batch=a.batch * group)
        smooth = Smooth(blackbox_classifier(cbb, front), 10, a.sigma, batch=a.batch)
        csv_path = d / f"certify-n0{a.n0}-n{a.n}.csv"
        done = read_rows(csv_path) if csv_path.is_file() else []
        t0 = time.perf_counter()
        rows = certify_images(
            smooth,
            test.images[cert_idx],
            test.labels[cert_idx],
            cert_idx,
            csv_path,
            n0=a.n0,
            n=a.n,
            alpha=a.alpha,
            seed=a.seed,
            blackbox=cbb,
            resume=bool(done),
            group=group,
        )
        cert_s = time.perf_counter() - t0
        rows = [r for r in rows if r["index"] in set(cert_idx)]
        summ = summarize(rows, RADII)
        tp = throughput(summ, len(rows) - len(done), cert_s)
        curves[name] = rows
        ca = summ["certified_accuracy"]
        results[name] = {
            "method": cfg.method,
            "estimator": cfg.estimator if cfg.zeroth_order else "backprop",
            "samples": cfg.samples,
            "certified_accuracy": ca,
            "standard_error": {k: _se(v, len(rows)) for k, v in ca.items()},
            "abstained": summ["abstained"],
            "train_queries_blackbox": card["queries"]["train_blackbox"],
            "train_whitebox_evaluations": card["queries"]["whitebox_evaluations"],
            "certify_queries": summ["queries"],
            "certify_images_per_second": tp["images_per_second"],
            "queries_per_certified_image": tp["queries_per_certified_image"],
            "train_seconds": card["train_seconds"],
            "certify_seconds": summ["seconds"],
            "images": len(rows),
            "architecture": card["architecture"],
        }
        print(
            f"{name}: CA "
            + " ".join(f"{100 * v:.1f}" for v in ca.values())
            + f" ({cert_s:.0f} s certifying)",
            flush=True,
        )
        (a.out / "results.json").write_text(
            json.dumps(
                {
                    "meta": metadata(),
                    "settings": vars(a)
                    | {
                        "out": str(a.out),
                        "victim_weights": str(a.victim_weights),
                        "dataset": dataset,
                        "victim": victim,
                        "splits": split,
                        "cert_indices": cert_idx,
                        "group": group,
                    },
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )

    save_curve(a.out / "certified_accuracy.png", curves, a.sigma)
    ref = results.get("fo-ds")
    n_img = len(cert_idx)
    print(
        f"\ndim {a.dim}: certified accuracy % (+- standard error, {n_img} images); "
        f"train: {split['train']}; certify: {split['certify']}"
    )
    head = (
        f"{'method':<16}"
        + "".join(f"{'CA@' + str(r):>13}" for r in RADII)
        + f"{'train q (bb)':>14}{'wb evals':>10}{'cert q':>11}{'q/cert img':>11}{'img/s':>7}"
        + f"{'train s':>9}"
        + (f"{'CA.25/fo-ds':>12}" if ref else "")
    )
    print(head)
    for name, r in results.items():
        ca = r["certified_accuracy"]
        line = (
            f"{name:<16}"
            + "".join(
                f"{100 * v:>7.1f} ±{100 * r['standard_error'][k]:>4.1f}" for k, v in ca.items()
            )
            + f"{r['train_queries_blackbox']:>14,}{r['train_whitebox_evaluations']:>10,}"
            + f"{r['certify_queries']:>11,}"
            + f"{(r['queries_per_certified_image'] or float('nan')):>11,.0f}"
            + f"{(r['certify_images_per_second'] or float('nan')):>7.2f}"
            + f"{r['train_seconds']:>9.0f}"
        )
        if ref:
            base = ref["certified_accuracy"]["0.25"]
            line += f"{(ca['0.25'] / base if base else float('nan')):>12.2f}"
        print(line)
    zo_ds = results.get("zo-ds-rge20")
    if ref and zo_ds:
        f = 100 * ref["certified_accuracy"]["0.25"]
        z = 100 * zo_ds["certified_accuracy"]["0.25"]
        print(f"ZO-DS deficit to FO-DS at r=0.25: {f - z:.1f} pts (dim {a.dim})")
        for name in ("zo-ae-ds-cge", "zo-ae-ds-rge20"):
            if name in results:
                v = 100 * results[name]["certified_accuracy"]["0.25"]
                print(
                    f"targets for {name} at r=0.25: within 5 pts of fo-ds ({v:.1f} vs {f:.1f}: "
                    f"{'met' if v >= f - 5 else 'NOT met'}); >= 15 pts above zo-ds ({v:.1f} "
                    f"vs {z:.1f}: {'met' if v >= z + 15 else 'NOT met'})"
                )
    print(f"wrote {a.out / 'results.json'} and {a.out / 'certified_accuracy.png'}")


if __name__ == "__main__":
    main()
