#!/usr/bin/env python
"""Small per-rule tuning grid on held-out images (issue 12): each gradient rule keeps its
paper's estimator; only subspace (schedule), lr, mu and momentum vary.

Images: the bundled Fashion-MNIST test images ``--offset`` .. ``--offset + --pool`` (default
300-499), the correctly classified ones, at most ``--images`` of them; never the benchmark's
evaluation images (the first 100 correctly classified, all below index 120). Victim small_cnn,
margin loss, untargeted. Each trial is one ``run_attack`` call; results are printed as JSON
lines and, with ``--out FILE``, written to FILE.

Run: ``python benchmarks/tune_rules.py --rule lizo --norm linf --grid 'SUB|LR|MU|MOM|K|DIFF' ...``
(lr and mu in units of eps; empty fields take the registry default).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.data import load_dataset
from zoattack.jobs.attack import AttackSpec
from zoattack.models import create_model
from zoattack.seeding import make_generator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rule", required=True)
    p.add_argument("--norm", default="linf")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--offset", type=int, default=300)
    p.add_argument("--pool", type=int, default=200)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--estimator", default=None)
    p.add_argument(
        "--grid", nargs="+", default=["|||"], help="SUBSPACE|LR|MU|MOMENTUM|SAMPLES|DIFFERENCE"
    )
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist", split="test", limit=a.offset + a.pool)
    x, y = ds.images[a.offset :], ds.labels[a.offset :]
    net = create_model("small_cnn", dataset=ds, pretrained=True, device=torch.device("cpu"))
    net.eval()
    with torch.no_grad():
        ok = net(x).argmax(1) == y
    x, y = x[ok][: a.images], y[ok][: a.images]
    rows = []
    for cell in a.grid:
        sub, lr, mu, mom, k, diff = (cell.split("|") + [""] * 6)[:6]
        base = AttackSpec(norm=a.norm, eps=a.eps, optimizer=a.rule, estimator=a.estimator)
        eps = base.resolved().eps
        assert eps is not None
        spec = AttackSpec(
            norm=a.norm,
            eps=a.eps,
            budget=a.budget,
            optimizer=a.rule,
            estimator=a.estimator,
            subspace=sub or None,
            lr=float(lr) * eps if lr else None,
            mu=float(mu) * eps if mu else None,
            momentum=float(mom) if mom else None,
            samples=int(k) if k else None,
            difference=diff or None,
        ).resolved()
        bb = BlackBox(net, output="logits", budget=a.budget, input_shape=tuple(x.shape[1:]))
        t0 = time.perf_counter()
        res = run_attack(
            bb,
            x,
            y,
            spec.make_rule(),
            generator=make_generator(0),
            norm=spec.norm,
            eps=eps,
            budget=a.budget,
            loss="margin",
            subspace=spec.subspace,
        )
        s = res.success
        q = res.queries[s].double()
        row = {
            "rule": a.rule,
            "norm": a.norm,
            "cell": cell,
            "estimator": spec.estimator,
            "subspace": spec.subspace,
            "lr_eps": spec.lr / eps,
            "mu_eps": None if spec.mu is None else spec.mu / eps,
            "momentum": spec.momentum,
            "samples": spec.samples,
            "difference": spec.difference,
            "success": round(float(s.double().mean()), 3),
            "images": len(y),
            "median_q": float(q.median()) if len(q) else None,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
