#!/usr/bin/env python
"""Held-out lr sweep for a rule run with another estimator (issue 12: rule x {prior, dap}).

A learning rate is tuned for one estimator's scale, so a pairing (``lizo`` with the ``prior``
estimator, ``zo_sgd`` with ``dap``, ...) may step too far or too short with the rule's own lr.
This runs ``--rule`` with ``--estimator`` (``prior`` takes the surrogate ``--prior``) on
held-out test images (the first ``--images`` that the victim classifies correctly from index
``--start`` = 300 on; the fidelity benchmark uses images 0-...), once per lr, where each lr is
``--mults`` times the rule's own tuned lr (or ``--lrs`` fractions of eps), and prints one JSON
line per run and a table. Victim and surrogate are loaded once; seed fixed.

Run: ``python benchmarks/tune_pairings.py --rule lizo --estimator prior --prior resnet20
--norm l2 --mults 0.01 0.03 0.1 0.3 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from _common import held_out, set_threads

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import AttackSpec, lr_origin
from zoattack.models import create_model
from zoattack.optim import OPTIMIZERS
from zoattack.seeding import make_generator


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rule", required=True)
    p.add_argument("--estimator", required=True)
    p.add_argument("--prior", default=None, help="surrogate model (estimator prior)")
    p.add_argument("--victim", default="small_cnn")
    p.add_argument("--norm", default="linf")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--start", type=int, default=300, help="first test index (held out)")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mults", type=float, nargs="*", default=[1.0])
    p.add_argument("--lrs", type=float, nargs="*", default=[], help="fractions of eps")
    p.add_argument("--own", action="store_true", help="also run the rule's own estimator")
    p.add_argument("--mu-frac", type=float, default=None, help="probe radius, fraction of eps")
    p.add_argument("--difference", default=None, help="forward or central")
    args = p.parse_args()
    set_threads(1)
    net = create_model(args.victim, dataset="fashion-mnist", pretrained=True).eval()
    net.requires_grad_(False)
    sur = None
    if args.prior:
        sur = create_model(args.prior, dataset="fashion-mnist", pretrained=True).eval()
        sur.requires_grad_(False)
    x, y = held_out(net, args.start, args.images)
    base = AttackSpec(model=args.victim, norm=args.norm, optimizer=args.rule, budget=args.budget)
    eps = base.resolved().eps
    assert eps is not None
    own_lr = OPTIMIZERS.get(args.rule).tuned(args.norm).lr or 0.5
    runs: list[tuple[str | None, float]] = []
    if args.own:
        runs.append((None, own_lr))
    runs += [(args.estimator, m * own_lr) for m in args.mults]
    runs += [(args.estimator, f) for f in args.lrs]
    rows = []
    for est, frac in runs:
        prior = args.prior if est in ("prior", "p_rgf", "prgf") else None
        spec = AttackSpec(
            model=args.victim,
            norm=args.norm,
            optimizer=args.rule,
            budget=args.budget,
            estimator=est,
            prior=prior,
            lr=frac * eps,
            mu=None if est is None or args.mu_frac is None else args.mu_frac * eps,
            difference=None if est is None else args.difference,
        ).resolved()
        bb = BlackBox(net, output="logits", budget=args.budget, input_shape=tuple(x.shape[1:]))
        t0 = time.perf_counter()
        assert spec.eps is not None and spec.subspace is not None
        res = run_attack(
            bb,
            x,
            y,
            spec.make_rule(),
            generator=make_generator(args.seed),
            norm=spec.norm,
            eps=spec.eps,
            budget=args.budget,
            subspace=spec.subspace,
            surrogate=sur if prior else None,
        )
        q = res.queries[res.success].double()
        row = {
            "rule": args.rule,
            "estimator": spec.estimator,
            "prior": prior or "",
            "norm": args.norm,
            "lr_frac": frac,
            "mu": spec.make_rule().estimator.mu,  # type: ignore[union-attr]
            "difference": spec.difference,
            "mult": round(frac / own_lr, 4),
            "success": round(float(res.success.float().mean()), 3),
            "median_q": float(q.median()) if len(q) else math.nan,
            "mean_q": round(float(q.mean()), 1) if len(q) else math.nan,
            "s": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    current = lr_origin(args.rule, args.norm, eps, args.estimator)
    print(f"# resolved default now: lr {current[0]:g} ({current[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
