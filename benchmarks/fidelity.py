#!/usr/bin/env python
"""Fidelity benchmark (issue 12): the seeds' attack experiments, "paper | here".

Part ``universal`` (ReLIZO Table 1 protocol, Wang et al. NeurIPS 2024 §4.3, following ZO-AdaMM's
``universal.py``): one perturbation ``delta`` for ``--universal-images`` correctly classified
test images, objective ``lam/M sum_i max(margin_i(clip(x_i + delta)), -kappa) + ||delta||_2^2``
(kappa 0, lam ``--lam``), box constraint by clipping the images to [0, 1]; ``--iters``
iterations of ZO-SGD (gaussian RGE), ZO-signSGD (sphere RGE), ZO-AdaMM (sphere RGE), R-AdaZO
(sphere RGE) and ReLIZO (LIZO with reuse), ``--directions`` directions each, with the options of
the recipe the paper followed (``--recipe code``, :data:`RECIPES`: ZO-AdaMM's universal.py lr
decay and betas for its three methods). Each method's lr
is searched (grid bracket, then regula falsi on log lr / log L2, :func:`calibrate_lr`) until
its final L2 distortion on *held-out* images (test images from index 300 on, never the
evaluated ones) is within ``--l2-tol`` of ``--target-l2``, as the paper equalised distortion.
Reported: success (fraction of the evaluated images the final delta fools), final L2 (held
out and evaluated), objective evaluations per step and the reuse rate
(``1 - fresh probes / n`` per step; ReLIZO only reuses).

Part ``per-image``: per-image untargeted attacks at Linf 0.1 and L2 1.5 with ``--budget``
queries on the bundled ``small_cnn`` and ``resnet20``: every gradient rule with its own
(paper) estimator and the CLI's tuned settings, the same rule with the transfer prior
(``prior`` estimator; surrogates from ``--priors``: ``other`` = the other bundled model,
small_cnn for resnet20 and the reverse, or any model name such as ``small_cnn_robust``), and
torchattacks' Square in the same run, on the same tensors. A swapped estimator (the prior,
``--estimators`` rows) runs with the lr `zoattack run` resolves for that (rule, estimator,
norm) pairing: tuned on held-out images (``pairing_defaults``, docs/TUNING.md), not the
rule's own-estimator lr. Query accounting is
the black box's ledger (every scored input counts); Square's is its own counter + 1 clean
check (benchmarks/attack.py explains and cross-checks it).

Run (the sizes in README.md): ``python benchmarks/fidelity.py --out bench_out/fidelity``;
``--parts universal`` or ``--parts per-image`` for one part; ``--images``, ``--budget``,
``--victims``, ``--norms`` to resize.

The code is in two files: this one (per-image and alignment parts, options) and
``_fidelity_universal.py`` (part ``universal``, and the images every part attacks).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import log, markdown_table, metadata, set_threads, versions, write_json
from _fidelity_universal import (  # noqa: F401  (re-exported: the names fidelity always had)
    LR_GRID,
    PAPER_UNIVERSAL,
    RECIPES,
    PenaltyUniversal,
    calibrate_lr,
    correct_images,
    part_universal,
    predict,
    universal_run,
)
from torch import Tensor, nn

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import AttackSpec
from zoattack.losses import attack_loss
from zoattack.models import create_model
from zoattack.seeding import make_generator

RULES = ("zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo")
OTHER = {"small_cnn": "resnet20", "resnet20": "small_cnn"}
EPS = {"linf": 0.1, "l2": 1.5}


# ------------------------------------------------------------------------------- per image
def per_image(
    victim: str,
    norm: str,
    rule: str,
    prior: str | None,
    net: nn.Module,
    sur: nn.Module | None,
    x: Tensor,
    y: Tensor,
    budget: int,
    seed: int,
    estimator: str | None = None,
) -> dict[str, Any]:
    # ``estimator`` swaps the rule's own (a labelled variant row: DAP in the grid).
    spec = AttackSpec(
        model=victim, norm=norm, optimizer=rule, budget=budget, prior=prior, estimator=estimator
    ).resolved()
    bb = BlackBox(net, output="logits", budget=budget, input_shape=tuple(x.shape[1:]))
    t0 = time.perf_counter()
    assert spec.eps is not None and spec.subspace is not None
    res = run_attack(
        bb,
        x,
        y,
        spec.make_rule(),
        generator=make_generator(seed),
        norm=norm,
        eps=spec.eps,
        budget=budget,
        subspace=spec.subspace,
        surrogate=sur,
    )
    ok = res.success
    q = res.queries[ok].double()
    return {
        "victim": victim,
        "norm": norm,
        "method": f"{rule}+{spec.estimator}",
        "prior": prior or "",
        "success": float(ok.float().mean()),
        "median_q": float(q.median()) if len(q) else math.nan,
        "mean_q": float(q.mean()) if len(q) else math.nan,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def square(victim: str, norm: str, net: nn.Module, x: Tensor, y: Tensor, budget: int, seed: int):
    sys.path.insert(0, str(Path(__file__).parent))
    from attack import run_torchattacks_square

    out = run_torchattacks_square(net, x, y, norm, EPS[norm], budget, seed)
    q = out.queries[out.success].double()
    return {
        "victim": victim,
        "norm": norm,
        "method": "torchattacks Square",
        "prior": "",
        "success": float(out.success.float().mean()),
        "median_q": float(q.median()) if len(q) else math.nan,
        "mean_q": float(q.mean()) if len(q) else math.nan,
        "seconds": round(out.wall, 1),
    }


def part_per_image(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    models = {
        name: create_model(name, dataset="fashion-mnist", pretrained=True)
        .eval()
        .requires_grad_(False)
        for name in {"small_cnn", "resnet20", *args.priors} - {"other"}
    }
    rows: list[dict[str, Any]] = []
    verdicts = []
    for victim in args.victims:
        net = models[victim]
        x, y = correct_images(net, 0, args.images)
        for norm in args.norms:
            sq = square(victim, norm, net, x, y, args.budget, args.seed)
            log(f"{victim} {norm} {sq}")
            rows.append(sq)
            own, with_prior = {}, {}
            for rule in args.rules:
                r = per_image(victim, norm, rule, None, net, None, x, y, args.budget, args.seed)
                log(f"{victim} {norm} {r}")
                rows.append(r)
                own[rule] = r["success"]
                for est in args.estimators:
                    r = per_image(
                        victim, norm, rule, None, net, None, x, y, args.budget, args.seed, est
                    )
                    log(f"{victim} {norm} {r}")
                    rows.append(r)
                for p in args.priors if args.with_prior else ():
                    p = OTHER[victim] if p == "other" else p
                    if p == victim:
                        continue
                    r = per_image(
                        victim, norm, rule, p, net, models[p], x, y, args.budget, args.seed
                    )
                    log(f"{victim} {norm} {r}")
                    rows.append(r)
                    with_prior[f"{rule}+{p}"] = r["success"]
            s = sq["success"]
            for rule, v in own.items():
                hit = v >= s - 0.05
                verdicts.append(
                    f"[{'PASS' if hit else 'FAIL'}] {victim} {norm}: {rule} (own estimator) "
                    f"within 5 pts of Square: {100 * v:.0f}% vs {100 * s:.0f}%"
                )
            if with_prior:
                best = max(with_prior, key=lambda k: with_prior[k])
                hit = with_prior[best] >= s + 0.05
                verdicts.append(
                    f"[{'PASS' if hit else 'FAIL'}] {victim} {norm}: best rule with prior "
                    f"({best}, {100 * with_prior[best]:.0f}%) >= Square + 5 pts ({100 * s:.0f}%)"
                )
    head = ["victim", "norm", "method", "prior (surrogate)", "success", "median q", "mean q", "s"]
    body = [
        [
            r["victim"],
            r["norm"],
            r["method"],
            r["prior"],
            f"{100 * r['success']:.0f}%",
            f"{r['median_q']:.0f}",
            f"{r['mean_q']:.0f}",
            f"{r['seconds']:.0f}",
        ]
        for r in rows
    ]
    return rows, "\n".join(markdown_table(head, body)) + "\n\n" + "\n".join(verdicts)


# ------------------------------------------------------------------------------- alignment
def part_alignment(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """What the prior adds to one estimate: median cosine with the victim's true gradient
    (white-box, for this diagnostic only) of the surrogate's gradient, of the sphere RGE and
    of P-RGF at the same q, at the clean images, per search subspace."""
    from zoattack.attacks.base import AttackObjective
    from zoattack.estimators import create_estimator
    from zoattack.subspace import Subspace

    models = {
        name: create_model(name, dataset="fashion-mnist", pretrained=True)
        .eval()
        .requires_grad_(False)
        for name in {*OTHER, *args.priors} - {"other"}
    }
    cos = torch.nn.functional.cosine_similarity
    rows = []
    pairs = [
        (victim, OTHER[victim] if p == "other" else p)
        for victim in args.victims
        for p in args.priors
        if p != victim
    ]
    for victim, sname in pairs:
        net, sur = models[victim], models[sname]
        x, y = correct_images(net, 0, args.images)
        for sp in ("full", "tile:14", "tile:7"):
            space = Subspace(sp, tuple(x.shape[1:]))
            obj = AttackObjective(
                BlackBox(net, output="logits", input_shape=tuple(x.shape[1:])),
                x,
                y,
                norm="linf",
                eps=EPS["linf"],
                subspace=space,
                surrogate=sur,
            )
            v = torch.zeros(len(x), *space.var_shape)
            var = v.clone().requires_grad_(True)
            loss = attack_loss(net((x + space.expand(var)).clamp(0, 1)), y).sum()
            true = torch.autograd.grad(loss, var)[0].flatten(1).double()
            ids = torch.arange(len(x))
            prior_g = obj.surrogate_gradient(v, ids).flatten(1).double()
            row = {
                "victim": victim,
                "surrogate": sname,
                "subspace": sp,
                "dim": space.dim,
                "cos_surrogate": float(cos(prior_g, true).median()),
            }
            for name, key in (("sphere", "cos_sphere"), ("prior", "cos_prgf")):
                # the radius and difference `zoattack run` uses at Linf 0.1 (eps/2, central)
                est = create_estimator(name, num_samples=10, mu=0.05, difference="central")
                g = est.estimate(obj, v, generator=make_generator(args.seed), idx=ids).grad
                row[key] = float(cos(g.flatten(1).double(), true).median())
            row["lambda"] = float(est.last_lambda.median())  # type: ignore[attr-defined]
            rows.append(row)
            log(f"alignment {row}")
    head = [
        "victim <- surrogate",
        "subspace (d)",
        "cos(surrogate grad, grad)",
        "cos(sphere RGE, grad)",
        "cos(P-RGF, grad)",
        "median lambda*",
    ]
    body = [
        [
            f"{r['victim']} <- {r['surrogate']}",
            f"{r['subspace']} ({r['dim']})",
            f"{r['cos_surrogate']:.3f}",
            f"{r['cos_sphere']:.3f}",
            f"{r['cos_prgf']:.3f}",
            f"{r['lambda']:.3f}",
        ]
        for r in rows
    ]
    return rows, "\n".join(markdown_table(head, body))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts",
        nargs="+",
        default=["universal", "per-image", "alignment"],
        choices=["universal", "per-image", "alignment"],
    )
    p.add_argument("--out", type=Path, default=Path("bench_out/fidelity"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    # universal
    p.add_argument("--universal-images", type=int, default=100)
    p.add_argument("--tune-images", type=int, default=20)
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--tune-iters", type=int, default=None, help="default: --iters")
    p.add_argument("--directions", type=int, default=8)
    p.add_argument("--mu", type=float, default=0.005)
    p.add_argument("--lam", type=float, default=10.0)
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="code",
        help="universal rule options: 'code' = ZO-AdaMM universal.py's (lr/sqrt(t+1) for "
        "ZO-SGD/signSGD/AdaMM, AdaMM beta2 0.3 on sqrt(v)); 'plain' = library defaults",
    )
    p.add_argument("--target-l2", type=float, default=2.0)
    p.add_argument("--l2-tol", type=float, default=0.05, help="relative, for the lr search")
    p.add_argument("--calib-steps", type=int, default=6, help="regula falsi runs per rule")
    # per image
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--victims", nargs="+", default=["small_cnn", "resnet20"], choices=list(OTHER))
    p.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=list(EPS))
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    p.add_argument("--no-prior", dest="with_prior", action="store_false")
    p.add_argument(
        "--estimators",
        nargs="*",
        default=["dap"],
        help="estimators swapped into every rule as extra, labelled rows (default: dap; "
        "give no names to skip)",
    )
    p.add_argument(
        "--priors",
        nargs="+",
        default=["other"],
        help="surrogates for the +prior rows: 'other' (the other bundled model) or model names "
        "(e.g. small_cnn_robust)",
    )
    args = p.parse_args(argv)
    # Calibrate at the evaluated length: distortion keeps growing with iterations.
    args.tune_iters = args.tune_iters or args.iters
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "meta": metadata(),
        "versions": versions("torchattacks"),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    text = []
    if "universal" in args.parts:
        rows, table = part_universal(args)
        report["universal"] = rows
        text.append(
            f"## Universal (ReLIZO Table 1 protocol), small_cnn, {args.universal_images} "
            f"images, {args.iters} iterations, recipe {args.recipe}\n\n{table}"
        )
    if "per-image" in args.parts:
        rows, table = part_per_image(args)
        report["per_image"] = rows
        text.append(f"## Per-image, {args.images} images, budget {args.budget}\n\n{table}")
    if "alignment" in args.parts:
        rows, table = part_alignment(args)
        report["alignment"] = rows
        text.append(
            f"## What the prior adds to one estimate (q = 10), {args.images} images\n\n{table}"
        )
    write_json(args.out / "fidelity.json", report)
    (args.out / "fidelity.md").write_text("\n\n".join(text) + "\n")
    print("\n\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
