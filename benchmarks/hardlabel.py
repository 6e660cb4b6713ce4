#!/usr/bin/env python
"""Hard-label benchmark: zoattack's decision attacks (and ART's HopSkipJump) on the same tensors.

Victim: the bundled ``small_cnn`` (Fashion-MNIST). Images: the first ``--images`` bundled test
images it classifies correctly. Untargeted, L2 and Linf, ``--budget`` membership queries per
image. Success: the closest adversarial found within the budget is at distance <= eps
(``--eps-l2`` 1.5, ``--eps-linf`` 0.1). Columns: success at eps, median distance at budget (inf
where no adversarial was found), median queries at which the distance first fell to eps (over
the images that got there), wall seconds.

Query accounting, one rule for everyone: every input the model scores counts, charged to its
image (the clean check, starts, every probe and bisection step). zoattack: the BlackBox
ledger. ART: a wrapper around the model counts every scored row of the image being attacked
(ART attacks one image at a time) and keeps the closest misclassified row within the
budget, the same best-so-far rule the zoattack oracle applies; the attack is stopped when
the budget runs out.

    PYTHONPATH=. python benchmarks/hardlabel.py --images 20 --budget 1000 --art
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from zoattack import BlackBox, load_dataset, make_generator
from zoattack.attacks.hardlabel import run_decision_attack
from zoattack.models import create_model
from zoattack.norms import distance

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "sign_opt": ("sign_opt", {}),
    "hsja": ("hsja", {}),
    "rays": ("rays", {}),
    "opt+zo_sgd": ("opt", {"optimizer": "zo_sgd"}),
    "opt+lizo": ("opt", {"optimizer": "lizo"}),
    "opt+radazo": ("opt", {"optimizer": "radazo"}),
    # the same in the lowest 14x14 DCT frequencies (zoattack.subspace)
    "sign_opt@dct14": ("sign_opt", {"subspace": "dct:14"}),
    "hsja@dct14": ("hsja", {"subspace": "dct:14"}),
    "opt+zo_sgd@dct14": ("opt", {"optimizer": "zo_sgd", "subspace": "dct:14"}),
    "opt+lizo@dct14": ("opt", {"optimizer": "lizo", "subspace": "dct:14"}),
    "opt+radazo@dct14": ("opt", {"optimizer": "radazo", "subspace": "dct:14"}),
}


class BudgetReached(Exception):
    pass


class ARTCounter(nn.Module):
    """Counts the rows ART scores for one image and keeps the best adversarial within budget."""

    def __init__(self, model: nn.Module, norm: str, budget: int) -> None:
        super().__init__()
        self.model, self.norm, self.budget = model, norm, budget
        self.reset(torch.zeros(1, 1, 28, 28), 0)

    def reset(self, x0: Tensor, label: int) -> None:
        self.x0, self.label = x0, label
        self.count, self.best, self.q_eps = 0, float("inf"), -1
        self.eps = 0.0

    def forward(self, x: Tensor) -> Tensor:
        room = self.budget - self.count
        if room <= 0:
            raise BudgetReached
        x = x[:room].float()
        with torch.no_grad():
            out = self.model(x)
        pred = out.argmax(1)
        for i in range(x.shape[0]):
            self.count += 1
            if int(pred[i]) != self.label:
                d = float(distance(x[i : i + 1], self.x0, self.norm))
                if d < self.best:
                    self.best = d
                    if self.q_eps < 0 and d <= self.eps:
                        self.q_eps = self.count
        if self.count >= self.budget:
            raise BudgetReached
        return out


def run_art(model, x, y, norm, eps, budget):
    import numpy as np
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    counter = ARTCounter(model, norm, budget)
    clf = PyTorchClassifier(
        model=counter,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    attack = HopSkipJump(
        clf, targeted=False, norm=2 if norm == "l2" else np.inf, max_iter=1000, verbose=False
    )
    dists, qs = [], []
    for i in range(x.shape[0]):
        counter.reset(x[i : i + 1], int(y[i]))
        counter.eps = eps
        try:
            attack.generate(x[i : i + 1].numpy(), y=None)
        except BudgetReached:
            pass
        dists.append(counter.best)
        qs.append(counter.q_eps)
    return torch.tensor(dists, dtype=torch.float64), torch.tensor(qs)


def summarise(name, norm, dists: Tensor, q_eps: Tensor, eps: float, secs: float) -> dict:
    ok = dists <= eps
    reached = [int(q) for q in q_eps.tolist() if q >= 0]
    return {
        "method": name,
        "norm": norm,
        "success": float(ok.float().mean()),
        "median_distance": float(dists.median()),
        "median_queries_to_eps": statistics.median(reached) if reached else None,
        "seconds": round(secs, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--eps-l2", type=float, default=1.5)
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--art", action="store_true", help="add ART's HopSkipJump")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = create_model("small_cnn", dataset="fashion-mnist", pretrained=True).eval()
    data = load_dataset("fashion-mnist", split="test", limit=max(100, 3 * args.images))
    with torch.no_grad():
        pred = model(data.images).argmax(1)
    keep = (pred == data.labels).nonzero().flatten()[: args.images]
    x, y = data.images[keep], data.labels[keep]
    rows = []
    for norm in args.norms.split(","):
        eps = args.eps_l2 if norm == "l2" else args.eps_linf
        for name in args.methods.split(","):
            attack, options = METHODS[name]
            if attack == "rays" and norm != "linf":
                continue
            bb = BlackBox(model, output="labels", budget=args.budget)
            t = time.perf_counter()
            res = run_decision_attack(
                attack,
                bb,
                x,
                y,
                generator=make_generator(args.seed),
                norm=norm,
                eps=eps,
                budget=args.budget,
                options=options,
            )
            secs = time.perf_counter() - t
            assert int(res.queries.max()) <= args.budget
            with torch.no_grad():
                fooled = model(res.x_adv).argmax(1) != y
            assert bool(fooled[res.found].all())
            rows.append(summarise(name, norm, res.distance, res.queries_to_eps, eps, secs))
            print(json.dumps(rows[-1]), flush=True)
        if args.art:
            t = time.perf_counter()
            dists, qs = run_art(model, x, y, norm, eps, args.budget)
            rows.append(summarise("art_hsja", norm, dists, qs, eps, time.perf_counter() - t))
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{args.images} images, budget {args.budget}, small_cnn fashion-mnist, seed {args.seed}"
    )
    head = ("method", "norm", "success", "median dist", "med q->eps", "s")
    print("{:18s} {:5s} {:>8s} {:>12s} {:>10s} {:>6s}".format(*head))
    for r in rows:
        q = r["median_queries_to_eps"]
        print(
            f"{r['method']:18s} {r['norm']:5s} {r['success']:8.2f} {r['median_distance']:12.3f} "
            f"{q if q is not None else '-':>10} {r['seconds']:6.1f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
