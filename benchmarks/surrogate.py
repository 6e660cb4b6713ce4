#!/usr/bin/env python
"""Surrogate benchmark: score attacks with a surrogate ensemble beside Square, on one victim.

Victim: ``--victim`` (default ``resnet20`` on CIFAR-10, its published weights found offline
through ``TORCH_HOME``). Surrogates: ``--surrogates NAME[@WEIGHTS],...`` (zoo names built for
the same data set; ``@WEIGHTS`` a weights file, else the published/shipped weights). Images:
the first ``--images`` test images from index ``--first`` that the victim classifies
correctly (tune on 0-249, report on 250-499). Methods: ``square`` (ours, no surrogate), the
zero-query ``transfer`` baseline, ``gfcs``, and ``zo_adamm`` with the ``prior`` estimator
(P-RGF on the ensemble). Untargeted, margin loss, one seed.

Columns: success (over the images attacked); median victim queries over successes; that
median as a ratio of Square's in the same run (the issue's target: <= 0.2 at Square's
success or better); surrogate gradient passes per image (local, never victim queries).

    TORCH_HOME=../shared/data/torch PYTHONPATH=. python benchmarks/surrogate.py \\
        --data-dir ../shared/data/cifar10-test-0-499 --surrogates resnet32,resnet44 \\
        --images 20 --budget 1000
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import zoattack
from zoattack.data import load_dataset
from zoattack.models import create_model

METHODS = {
    "square": {"attack": "square"},
    "transfer": {"attack": "transfer", "surrogates": True},
    "gfcs": {"attack": "gfcs", "surrogates": True},
    "prior": {"attack": "zo", "optimizer": "zo_adamm", "estimator": "prior", "surrogates": True},
}


def load(name: str, data: Any, weights: str | None) -> torch.nn.Module:
    """A model with real weights: the file given, else its published ones (found offline
    through the torch hub cache, ``TORCH_HOME``) or the package's shipped ones."""
    if weights:
        return create_model(name, dataset=data, weights=weights)
    return create_model(name, dataset=data, pretrained=True, download=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--victim", default="resnet20")
    ap.add_argument("--victim-weights", default=None)
    ap.add_argument("--surrogates", default="resnet32,resnet44")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--first", type=int, default=250)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--eps-l2", type=float, default=0.5)
    ap.add_argument("--eps-linf", type=float, default=8 / 255)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = load_dataset(
        args.dataset, split="test", data_dir=args.data_dir, limit=args.first + 10 * args.images
    )
    victim = load(args.victim, data, args.victim_weights).eval()
    surrogates = []
    for item in args.surrogates.split(","):
        name, _, weights = item.partition("@")
        surrogates.append(load(name, data, weights or None).eval())
    x, y = data.images[args.first :], data.labels[args.first :]
    with torch.no_grad():
        keep = (victim(x).argmax(1) == y).nonzero().flatten()[: args.images]
    x, y = x[keep], y[keep]
    print(
        f"victim {args.victim}, surrogates {args.surrogates}, {len(y)} correctly classified "
        f"images from index {args.first}, budget {args.budget}"
    )
    print("| norm | method | success | median queries | vs square | surrogate grads/image | s |")
    print("|---|---|---|---|---|---|---|")
    for norm in args.norms.split(","):
        eps = args.eps_l2 if norm == "l2" else args.eps_linf
        square_median = None
        for method in args.methods.split(","):
            opts = dict(METHODS[method])
            if opts.pop("surrogates", False):
                opts["surrogates"] = surrogates
            if method == "prior":
                opts["subspace"] = "full"
            t0 = time.perf_counter()
            res = zoattack.attack(
                victim, x, y, norm=norm, eps=eps, budget=args.budget, seed=args.seed, **opts
            )
            wall = time.perf_counter() - t0
            ok = res.success
            q = [int(v) for v in res.queries[ok].tolist()]
            med = statistics.median(q) if q else float("nan")
            if method == "square":
                square_median = med
            ratio = med / square_median if square_median else float("nan")
            grads = res.settings.get("surrogate_grads")
            grads = None if grads is None else round(grads / len(y), 1)
            print(
                f"| {norm} {eps:.4g} | {method} | {ok.float().mean().item():.0%} | {med:g} | "
                f"{ratio:.2f} | {grads if grads is not None else '-'} | {wall:.0f} |"
            )


if __name__ == "__main__":
    main()
