#!/usr/bin/env python
"""Held-out diagnostic of the transfer prior (issue 12): why P-RGF helps or hurts.

Per-image attacks on ``--victim`` with ``zoattack run``'s settings for each rule, on held-out
test images (index >= 300, never the benchmark's), with the rule's own estimator and with the
``prior`` estimator in several variants. At every estimator call it records the estimated
cosine alpha-hat, the true cosine between the prior and the victim's gradient (white-box,
for this diagnostic only), lambda and the lambda the true cosine would give, the ratio of the
estimated ||grad||^2 to the true one, and the loss change of the following step grouped by
the lambda that produced it (lambda = 0, mid, 1).

Variants: ``own`` (the rule's estimator), ``new`` (the defaults), ``fresh`` (the earlier
S-probes-every-10-calls norm), ``old`` (fresh norm, forward differences at eps/2: the
earlier `--prior` settings), ``raw`` (no feasibility step on the prior at the ball's
boundary), ``cap.5`` (lambda capped at 0.5).

    python benchmarks/prior_diagnostic.py --surrogate small_cnn_robust --norms l2 \\
        --rules zo_adamm zo_signsgd --variants own new raw --images 40
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from _common import set_threads
from fidelity import OTHER, correct_images

import zoattack.attacks.base as attack_base
from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.estimators.prior import PriorEstimator, optimal_lambda
from zoattack.jobs.attack import AttackSpec
from zoattack.models import create_model
from zoattack.objective import surrogate_gradient_of
from zoattack.seeding import make_generator

VARIANTS: dict[str, dict[str, Any]] = {
    "new": {},
    "fresh": {"norm_estimate": "fresh"},
    "old": {"norm_estimate": "fresh", "mu": "half-eps", "difference": "forward"},
    "raw": {"raw": True},
    "cap.5": {"lambda_cap": 0.5},
}
FEASIBLE = attack_base.feasible_prior


def load(name: str) -> torch.nn.Module:
    return create_model(name, dataset="fashion-mnist", pretrained=True).eval().requires_grad_(False)


def run(args: argparse.Namespace, norm: str, rule: str, variant: str) -> dict[str, Any]:
    net, sur = load(args.victim), load(args.surrogate or OTHER[args.victim])
    x, y = correct_images(net, 300, args.images)
    own = variant == "own"
    spec = AttackSpec(
        model=args.victim,
        norm=norm,
        optimizer=rule,
        budget=args.budget,
        prior=None if own else (args.surrogate or OTHER[args.victim]),
    ).resolved()
    rule_obj = spec.make_rule()
    st: dict[str, list[Any]] = {k: [] for k in ("ah", "at", "g2", "lam", "lamt", "prog")}
    last: dict[int, tuple[float, float]] = {}
    kw = dict(VARIANTS.get(variant, {}))
    raw = bool(kw.pop("raw", False))
    attack_base.feasible_prior = (lambda g, *a, **k: g) if raw else FEASIBLE  # type: ignore[assignment]
    if not own:
        base = rule_obj.estimator
        assert base is not None and spec.eps is not None
        if kw.get("mu") == "half-eps":
            kw["mu"] = 0.5 * spec.eps
        kw.setdefault("mu", base.mu)
        kw.setdefault("difference", base.difference)
        est = PriorEstimator(num_samples=base.num_samples, **kw)
        inner = est._estimate

        def hooked(objective, xx, shape, generator, idx, fx):  # type: ignore[no-untyped-def]
            obj = surrogate_gradient_of(objective).__self__  # type: ignore[union-attr]
            n = xx.shape[0]
            v = obj._surrogate_gradient(xx.view(n, *shape), idx).reshape(n, -1).double()
            obj.surrogate = net  # the victim's own gradient: diagnostic only
            true = obj._surrogate_gradient(xx.view(n, *shape), idx).reshape(n, -1).double()
            obj.surrogate = sur
            out = inner(objective, xx, shape, generator, idx, fx)
            at = torch.nn.functional.cosine_similarity(v, true, dim=1)
            st["ah"] += est.last_alpha.tolist()  # type: ignore[union-attr]
            st["at"] += at.tolist()
            if est.last_gnorm2 is not None:
                st["g2"] += [r for r in (est.last_gnorm2 / true.pow(2).sum(1)).tolist() if r == r]
            lam = est.last_lambda.tolist()  # type: ignore[union-attr]
            st["lam"] += lam
            st["lamt"] += optimal_lambda(at.pow(2), xx.shape[1], est.num_samples).tolist()
            if out.loss is not None:
                for i, f, lm in zip(idx.tolist(), out.loss.tolist(), lam):
                    if i in last:
                        st["prog"].append((last[i][1], f - last[i][0]))
                    last[i] = (f, lm)
            return out

        est._estimate = hooked  # type: ignore[method-assign]
        rule_obj.estimator = est
    bb = BlackBox(net, output="logits", budget=args.budget, input_shape=tuple(x.shape[1:]))
    t0 = time.perf_counter()
    assert spec.eps is not None and spec.subspace is not None
    res = run_attack(
        bb,
        x,
        y,
        rule_obj,
        generator=make_generator(args.seed),
        norm=norm,
        eps=spec.eps,
        budget=args.budget,
        subspace=spec.subspace,
        surrogate=None if own else sur,
    )
    attack_base.feasible_prior = FEASIBLE  # type: ignore[assignment]
    ok = res.success
    q = res.queries[ok].double()
    row: dict[str, Any] = {
        "norm": norm,
        "rule": rule,
        "variant": variant,
        "success": round(float(ok.float().mean()), 3),
        "median_q": float(q.median()) if len(q) else None,
        "s": round(time.perf_counter() - t0, 1),
    }
    if st["ah"]:
        med = lambda k: round(float(torch.tensor(st[k]).median()), 3)  # noqa: E731
        mean = lambda k: round(float(torch.tensor(st[k]).mean()), 3)  # noqa: E731
        row.update(alpha_hat=med("ah"), alpha_true=med("at"), lam_mean=mean("lam"))
        row.update(lam_true_mean=mean("lamt"))
        row["lam1_share"] = round(float((torch.tensor(st["lam"]) >= 1).float().mean()), 3)
        if st["g2"]:
            g2 = torch.tensor(st["g2"])
            row.update(g2_ratio=round(float(g2.median()), 3))
            row.update(g2_abs_log_err=round(float(g2.log().abs().median()), 3))
        for name, lo, hi in (
            ("dloss_lam0", -1, 0.05),
            ("dloss_mid", 0.05, 0.999),
            ("dloss_lam1", 0.999, 2),
        ):
            sel = [d for lm, d in st["prog"] if lo < lm <= hi]
            row[name] = [round(sum(sel) / len(sel), 4), len(sel)] if sel else None
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--victim", default="small_cnn", choices=list(OTHER))
    p.add_argument("--surrogate", default=None, help="default: the other bundled model")
    p.add_argument("--norms", nargs="+", default=["linf", "l2"])
    p.add_argument("--rules", nargs="+", default=["zo_adamm", "zo_signsgd"])
    p.add_argument("--variants", nargs="+", default=["own", "new"])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    set_threads(1)
    for norm in args.norms:
        for rule in args.rules:
            for variant in args.variants:
                print(json.dumps(run(args, norm, rule, variant)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
