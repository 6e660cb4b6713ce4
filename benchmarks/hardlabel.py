#!/usr/bin/env python
"""Hard-label benchmark: zoattack's decision attacks beside ART's and foolbox's on the same tensors.

Victims: the bundled ``small_cnn`` and ``resnet20`` (Fashion-MNIST). Images: for each victim,
the first ``--images`` bundled test images (indices 0-299; 300-499 are held out for tuning)
it classifies correctly. Untargeted, L2 and Linf, ``--budgets`` membership queries per image,
one seed. Success: the closest adversarial found within the budget is at distance <= eps
(``--eps-l2`` 1.5, ``--eps-linf`` 0.1).

Columns: success at eps; median distance at the budget over all images (inf where no
adversarial was found); median queries at which the distance first fell to eps (over the
images that got there); the median distance after 1,000 queries of the same run (the curve's
checkpoint; only for budgets above 1,000); throughput = scored inputs per wall second of the
whole attack / the victim's bare forward rate on the same batch sizes (``RawProfile`` replays
the attack's batch-size histogram), so 1.0 means the attack costs nothing beyond the model;
model share = seconds inside the victim's forward during the attack / wall seconds, the same
ratio measured under the same machine load (the replay runs at another moment; on a loaded
shared machine it can exceed 1).

Query accounting, one rule for everyone: every input the model scores counts, charged to its
image (the clean check, starts, every probe and bisection step). zoattack: the BlackBox
ledger. Peers attack one image at a time; a wrapper around the model counts every scored row
and keeps the closest misclassified row within the budget, the same best-so-far rule the
zoattack oracle applies, and stops the attack (an exception) when the budget runs out.

    PYTHONPATH=. python benchmarks/hardlabel.py --models small_cnn --images 20 --budgets 1000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import Meter, RawProfile, log, markdown_table, metadata, write_json
from torch import Tensor, nn

from zoattack import BlackBox, load_dataset, make_generator
from zoattack.attacks.hardlabel import run_decision_attack
from zoattack.models import create_model
from zoattack.norms import distance

# name -> (attack, options): defaults, OPT with each seed rule on its own estimator, and the
# dct:14 search-subspace variants (labelled; zoattack.subspace)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "sign_opt": ("sign_opt", {}),
    "hsja": ("hsja", {}),
    "rays": ("rays", {}),
    "opt+zo_sgd": ("opt", {"optimizer": "zo_sgd"}),
    "opt+zo_adamm": ("opt", {"optimizer": "zo_adamm"}),
    "opt+radazo": ("opt", {"optimizer": "radazo"}),
    "opt+lizo": ("opt", {"optimizer": "lizo"}),
    # Linf only: the opt-in saturated ray (half the coordinates at the full radius)
    "sign_opt+sat": ("sign_opt", {"saturate": 0.5}),
    "opt+zo_sgd+sat": ("opt", {"optimizer": "zo_sgd", "saturate": 0.5}),
    "opt+zo_adamm+sat": ("opt", {"optimizer": "zo_adamm", "saturate": 0.5}),
    "opt+radazo+sat": ("opt", {"optimizer": "radazo", "saturate": 0.5}),
    "opt+lizo+sat": ("opt", {"optimizer": "lizo", "saturate": 0.5}),
    "sign_opt@dct14": ("sign_opt", {"subspace": "dct:14"}),
    "hsja@dct14": ("hsja", {"subspace": "dct:14"}),
    "opt+zo_sgd@dct14": ("opt", {"optimizer": "zo_sgd", "subspace": "dct:14"}),
    "opt+lizo@dct14": ("opt", {"optimizer": "lizo", "subspace": "dct:14"}),
    "opt+radazo@dct14": ("opt", {"optimizer": "radazo", "subspace": "dct:14"}),
}
DEFAULT_METHODS = (
    "sign_opt,hsja,rays,opt+zo_sgd,opt+zo_adamm,opt+radazo,opt+lizo,"
    "sign_opt+sat,opt+zo_sgd+sat,opt+zo_adamm+sat,opt+radazo+sat,opt+lizo+sat"
)
PEERS = ("art_hsja", "art_signopt", "fb_hsja")
CHECKPOINT = 1000  # distance after this many queries, read off longer runs' curves


class BudgetReached(Exception):
    pass


class PeerCounter(nn.Module):
    """Counts the rows a peer scores for one image, keeps the best adversarial within budget
    (and the best within the first ``CHECKPOINT`` queries) and stops the peer at the budget."""

    def __init__(self, model: nn.Module, norm: str, eps: float, budget: int) -> None:
        super().__init__()
        self.model, self.norm, self.eps, self.budget = model, norm, eps, budget
        self.reset(torch.zeros(1, 1, 28, 28), 0)

    def reset(self, x0: Tensor, label: int) -> None:
        self.x0, self.label = x0, label
        self.count, self.best, self.best_at_cp, self.q_eps = 0, math.inf, math.inf, -1

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
            if self.count == CHECKPOINT:
                self.best_at_cp = self.best
        if self.count >= self.budget:
            raise BudgetReached
        return out


def peer_attack(name: str, counter: PeerCounter, shape: tuple[int, ...], norm: str, budget: int):
    """A callable attacking one image ``(1, C, H, W)`` with the peer (raises BudgetReached)."""
    import numpy as np

    if name == "fb_hsja":
        import foolbox as fb

        fmodel = fb.PyTorchModel(counter, bounds=(0.0, 1.0))
        fb_att = fb.attacks.HopSkipJumpAttack(
            steps=10**6, constraint="l2" if norm == "l2" else "linf"
        )

        def run_fb(x: Tensor, y: Tensor) -> None:
            fb_att.run(fmodel, x, fb.criteria.Misclassification(y))

        return run_fb
    from art.attacks.evasion import HopSkipJump, SignOPTAttack
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=counter,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    if name == "art_hsja":
        attack: Any = HopSkipJump(
            clf, targeted=False, norm=2 if norm == "l2" else np.inf, max_iter=10**6, verbose=False
        )
    else:  # art_signopt: ART's defaults, its own query cap lifted above the budget
        attack = SignOPTAttack(clf, targeted=False, query_limit=10 * budget, verbose=False)

    def run_art(x: Tensor, y: Tensor) -> None:
        attack.generate(x.numpy(), y=None)

    return run_art


def run_peer(name, model, x, y, norm, eps, budget) -> dict[str, Any]:
    meter = Meter(model)
    counter = PeerCounter(meter, norm, eps, budget).eval()
    attack = peer_attack(name, counter, tuple(x.shape[1:]), norm, budget)
    dists, at_cp, qs, scored = [], [], [], 0
    t = time.perf_counter()
    for i in range(x.shape[0]):
        counter.reset(x[i : i + 1], int(y[i]))
        try:
            attack(x[i : i + 1], y[i : i + 1])
        except BudgetReached:
            pass
        if counter.count < CHECKPOINT:
            counter.best_at_cp = counter.best
        dists.append(counter.best)
        at_cp.append(counter.best_at_cp)
        qs.append(counter.q_eps)
        scored += counter.count
    secs = time.perf_counter() - t
    return {
        "distance": torch.tensor(dists, dtype=torch.float64),
        "at_cp": torch.tensor(at_cp, dtype=torch.float64),
        "q_eps": torch.tensor(qs),
        "scored": scored,
        "seconds": secs,
        "batches": dict(meter.batches),
        "model_seconds": meter.model_seconds,
        "max_queries": None,
    }


def dist_at(curve: list[tuple[int, float]], q: int) -> float:
    best = math.inf
    for qq, d in curve:
        if qq <= q:
            best = min(best, d)
    return best


def run_ours(name, model, x, y, norm, eps, budget, seed) -> dict[str, Any]:
    attack, options = METHODS[name]
    meter = Meter(model)
    bb = BlackBox(meter, output="labels", budget=budget)
    t = time.perf_counter()
    res = run_decision_attack(
        attack,
        bb,
        x,
        y,
        generator=make_generator(seed),
        norm=norm,
        eps=eps,
        budget=budget,
        options=options,
    )
    secs = time.perf_counter() - t
    assert int(res.queries.max()) <= budget
    assert int(res.queries.sum()) == meter.rows  # the ledger is every scored row
    # Re-check every reported adversarial with the model, alone. Bisection ends a hair from
    # the boundary, where batch-size-dependent float rounding can flip a label: such flips
    # (top-2 logit gap < 1e-4) are counted, anything else fails the run.
    flips = 0
    with torch.no_grad():
        for i in res.found.nonzero().flatten().tolist():
            out = model(res.x_adv[i : i + 1])[0]
            if int(out.argmax()) == int(y[i]):
                gap = float(out.topk(2).values[0] - out.topk(2).values[1])
                assert gap < 1e-4, f"{name}: image {i} not adversarial on re-check (gap {gap})"
                flips += 1
    return {
        "distance": res.distance,
        "at_cp": torch.tensor([dist_at(c, CHECKPOINT) for c in res.curve], dtype=torch.float64),
        "q_eps": res.queries_to_eps,
        "scored": meter.rows,
        "seconds": secs,
        "batches": dict(meter.batches),
        "model_seconds": meter.model_seconds,
        "recheck_flips": flips,
        "max_queries": int(res.queries.max()),
    }


def summarise(out: dict[str, Any], raw: RawProfile, eps: float, budget: int) -> dict[str, Any]:
    dists = out["distance"]
    reached = [int(q) for q in out["q_eps"].tolist() if q >= 0]
    raw_s = raw.seconds_for(out["batches"])
    row = {
        "success": float((dists <= eps).float().mean()),
        "median_distance": float(dists.median()),
        "median_queries_to_eps": statistics.median(reached) if reached else None,
        "median_distance_at_1k": float(out["at_cp"].median()) if budget > CHECKPOINT else None,
        "scored": out["scored"],
        "seconds": round(out["seconds"], 1),
        "throughput_ratio": raw_s / max(out["seconds"], 1e-9),
        "model_share": out["model_seconds"] / max(out["seconds"], 1e-9),
        "mean_batch": out["scored"] / max(sum(out["batches"].values()), 1),
    }
    if "recheck_flips" in out:
        row["recheck_flips"] = out["recheck_flips"]
    return row


def images_for(model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
    data = load_dataset("fashion-mnist", split="test", limit=300)
    with torch.no_grad():
        pred = model(data.images).argmax(1)
    keep = (pred == data.labels).nonzero().flatten()[:n]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} of test images 0-299 are classified correctly")
    return data.images[keep], data.labels[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="small_cnn,resnet20")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--budgets", default="1000,10000")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"of {', '.join(METHODS)}")
    ap.add_argument("--peers", default=",".join(PEERS), help="'' for none")
    ap.add_argument("--eps-l2", type=float, default=1.5)
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows and run metadata here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    peers = [p for p in args.peers.split(",") if p]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        log(json.dumps(row))
        if args.json:
            write_json(Path(args.json), {"meta": metadata(args=vars(args)), "rows": rows})

    for model_name in args.models.split(","):
        model = create_model(model_name, dataset="fashion-mnist", pretrained=True).eval()
        x, y = images_for(model, args.images)
        raw = RawProfile(model, tuple(x.shape[1:]))
        for budget in [int(b) for b in args.budgets.split(",")]:
            for norm in args.norms.split(","):
                eps = args.eps_l2 if norm == "l2" else args.eps_linf
                head = {"model": model_name, "budget": budget, "norm": norm, "images": len(x)}
                for peer in peers:
                    if peer == "art_signopt" and norm != "l2":
                        continue  # ART's SignOPT is L2 only
                    out = run_peer(peer, model, x, y, norm, eps, budget)
                    emit({**head, "method": peer, **summarise(out, raw, eps, budget)})
                for name in methods:
                    linf_only = METHODS[name][0] == "rays" or "saturate" in METHODS[name][1]
                    if linf_only and norm != "linf":
                        continue
                    out = run_ours(name, model, x, y, norm, eps, budget, args.seed)
                    emit({**head, "method": name, **summarise(out, raw, eps, budget)})
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "model",
        "norm",
        "budget",
        "images",
        "method",
        "success",
        "median dist",
        "med q->eps",
        "med dist @1k",
        "thru/raw",
        "model share",
        "s",
    )

    def cell(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    body = [
        (
            r["model"],
            r["norm"],
            str(r["budget"]),
            str(r["images"]),
            r["method"],
            f"{100 * r['success']:.0f}%",
            cell(r["median_distance"], ".3f"),
            cell(r["median_queries_to_eps"], ".0f"),
            cell(r["median_distance_at_1k"], ".3f"),
            cell(r["throughput_ratio"], ".2f"),
            cell(r.get("model_share"), ".2f"),
            cell(r["seconds"], ".0f"),
        )
        for r in rows
    ]
    print("\n".join(markdown_table(header, body)))


if __name__ == "__main__":
    main()
