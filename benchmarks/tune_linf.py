#!/usr/bin/env python
"""Held-out probes for the generic ZO-rule tricks (issue 12): success / median queries of one
rule on held-out test images (index >= ``--start``, never the fidelity benchmark's images
0-...), with AttackSpec overrides (``--set field=value``) and extra rule options
(``--rule-opt key=value``), one line of JSON per configuration.

Run: ``python benchmarks/tune_linf.py --rule zo_signsgd --images 40 --start 300
--set restart=30 --set start=stripes``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from typing import Any

from _common import held_out, set_threads

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import AttackSpec
from zoattack.models import create_model
from zoattack.optim import create_optimizer
from zoattack.seeding import make_generator


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        out[key.replace("-", "_")] = _value(val)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rule", required=True)
    p.add_argument("--victim", default="small_cnn")
    p.add_argument("--norm", default="linf")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--start", type=int, default=300, help="first test index (held out)")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="AttackSpec field=value")
    p.add_argument("--rule-opt", action="append", default=[], help="extra rule option")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    set_threads(1)
    net = create_model(args.victim, dataset="fashion-mnist", pretrained=True).eval()
    net.requires_grad_(False)
    x, y = held_out(net, args.start, args.images)
    overrides = _pairs(args.set)
    spec = AttackSpec(
        model=args.victim, norm=args.norm, optimizer=args.rule, budget=args.budget, **overrides
    ).resolved()
    extra = _pairs(args.rule_opt)
    rule = spec.make_rule() if not extra else _rule(spec, extra)
    bb = BlackBox(net, output="logits", budget=args.budget, input_shape=tuple(x.shape[1:]))
    t0 = time.perf_counter()
    assert spec.eps is not None and spec.subspace is not None
    res = run_attack(
        bb,
        x,
        y,
        rule,
        generator=make_generator(args.seed),
        norm=spec.norm,
        eps=spec.eps,
        budget=args.budget,
        subspace=spec.subspace,
    )
    q = res.queries[res.success].double()
    out = {
        "tag": args.tag,
        "rule": args.rule,
        "set": overrides,
        "opt": extra,
        "success": round(float(res.success.float().mean()), 3),
        "median_q": float(q.median()) if len(q) else math.nan,
        "mean_q": round(float(q.mean()), 1) if len(q) else math.nan,
        "s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out), flush=True)
    return 0


def _rule(spec: AttackSpec, extra: dict[str, Any]) -> Any:
    kw = {
        "lr": spec.lr,
        "estimator": spec.estimator,
        "num_samples": spec.samples,
        "mu": spec.mu,
        "difference": spec.difference,
        "momentum": spec.momentum,
    }
    return create_optimizer(str(spec.optimizer), **{**kw, **extra})


if __name__ == "__main__":
    raise SystemExit(main())
