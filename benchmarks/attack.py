#!/usr/bin/env python
"""Attack benchmark: zoattack's rules against torchattacks' and ART's attacks, same tensors.

What it measures (every number comes from this one run; nothing is hard-coded):

* Victims: the bundled ``resnet20`` / ``small_cnn`` Fashion-MNIST models (``--weights NAME=FILE``
  overrides the shipped file). Images: the first ``--images`` test images of the bundled
  Fashion-MNIST subset that the victim classifies correctly (the same tensors go to every
  attack). Threat models: Linf eps 0.1, L2 eps 1.5 (``--eps-linf``/``--eps-l2``), untargeted,
  margin loss. Budgets: per image, ``--budgets``.
* zoattack: every update rule in ``--methods`` through the library API
  (:func:`zoattack.attacks.run_attack` on a :class:`zoattack.blackbox.BlackBox`). The gradient
  rules (zo_sgd, zo_signsgd, zo_adamm, radazo, lizo) get a configuration chosen on *held-out*
  images (the next ``--tune-images`` correctly classified test images, never the evaluated
  ones): the subspace among full / tile:7 / tile:14 / dct:14 / tile:7>tile:14>full at the CLI's
  default lr, then lr x {0.5, 2} (``--tune full``), then a few difference / momentum /
  line-search alternatives (never another estimator: each rule keeps its paper's, issue 12).
  The choice is printed and written to ``tuning.json``; ``--configs FILE`` reuses it. The
  search rules ``square`` and ``sign`` (Linf only) take lr = eps, the norm and the budget, as
  the CLI.
* Peers on the same tensors in the same process: torchattacks' Square, ART's SquareAttack and
  ART's ZooAttack (``--peers``; a peer that is not installed is a "skipped" row).

Query accounting (one rule for everyone: every scored input counts, charged to its image;
an image succeeds at the first scored point that fools the model inside the threat model):

* zoattack: the BlackBox ledger (the clean check and every iterate check count).
* torchattacks Square: its own per-image counter from ``attack_single_run`` (the start point
  and one query per iteration, stopped at the first fooling point) + 1 for the clean check
  that ``perturb`` also makes; it runs with ``n_queries = budget - 2`` iterations so the total
  never exceeds the budget. A row-counting wrapper around the model cross-checks that the
  counter equals the inputs the model actually scored.
* ART: ART reports no per-image counts, so the model is wrapped in a module that attributes
  every scored row to its image (the nearest clean image; unambiguous because the clean images
  are further than 2 eps apart, which is checked) and records the count at the first row that
  is misclassified inside the ball and [0, 1]. ART's SquareAttack scores ~3 inputs per image and
  iteration (it re-scores the current point and keeps scoring fooled images); ``max_iter`` is
  set so that an unfooled image stays within the budget. ART's ZooAttack (coordinate-wise,
  2 x nb_parallel + 1 queries per iteration, C&W-penalised so not eps-constrained) runs on
  ``--zoo-images`` images at budgets <= ``--zoo-max-budget`` only.
* Success for every method: the returned point is misclassified (re-checked with an uncounted
  forward), lies inside the eps-ball and [0, 1], and its query count is <= the budget.
  Mean / median queries are over successes.

Speed: wall time per attack; wall time per successful image; scored inputs per second during
the attack against the victim's raw rate on the same calls (the time spent inside the model's
forward, measured by a wrapper in this run, so the ratio is the share of the attack's wall
time that is model time; contention from other jobs hits both sides alike). A bare re-run of
the same sequence of batch sizes after the attack (``bare_inputs_per_s`` in the JSON) is
reported too; on a shared machine it is noisier.

Run: ``python benchmarks/attack.py --quick`` (under 2 minutes), or e.g.
``python benchmarks/attack.py --victims small_cnn resnet20 --norms linf l2 --budgets 1000
--threads 1 --out bench_out``. Peers: ``make peers``.

The code is in three files: this one (image selection, tuning, the run), ``_attack_runners.py``
(methods and runners) and ``_attack_report.py`` (rows, table, verdicts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _attack_report import (
    add_ratios,
    make_row,
    skipped_row,
    table,
    verdicts,
)
from _attack_runners import (
    ALL_METHODS,
    GRADIENT_RULES,
    PEER_RUNNERS,
    PEERS,
    REFERENCE,  # noqa: F401  (re-exported)
    SEARCH_RULES,
    SUBSPACES,
    VICTIM_FILES,
    Config,
    Outcome,  # noqa: F401  (re-exported)
    build_rule,  # noqa: F401  (re-exported)
    lr_of,  # noqa: F401  (re-exported)
    predict,
    run_torchattacks_square,  # noqa: F401  (re-exported)
    run_zoattack,
    verify,  # noqa: F401  (re-exported)
)
from _common import (
    RawProfile,
    command_line,
    fmt,
    installed,
    load_average,
    log,
    metadata,
    out_dir,
    set_threads,
    versions,
    write_csv,
    write_json,
)
from torch import Tensor, nn

from zoattack.data import load_dataset
from zoattack.models import create_model
from zoattack.models.weights import weights_dir, weights_filename
from zoattack.norms import DEFAULT_EPS


# --------------------------------------------------------------------------- data / tuning
def select_images(
    net: nn.Module, dataset: str, n_eval: int, n_tune: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """First ``n_eval`` correctly classified test images, then the next ``n_tune``."""
    need, limit = n_eval + n_tune, max(64, int(1.3 * (n_eval + n_tune)))
    while True:
        ds = load_dataset(dataset, split="test", limit=limit)
        ok = (predict(net, ds.images) == ds.labels).nonzero().flatten()
        if len(ok) >= need or len(ds) < limit:  # enough, or the split is exhausted
            break
        limit *= 2
    ev, tu = ok[:n_eval], ok[n_eval:need]
    last = int(ev[-1]) + 1 if len(ev) else 0
    return ds.images[ev], ds.labels[ev], ds.images[tu], ds.labels[tu], last


def tune(
    method: str, net, x, y, norm, eps, budget, seed, max_batch, level: str
) -> tuple[Config, list[dict]]:
    """Pick a configuration on held-out images: (successes desc, mean queries over all asc)."""
    trials: list[dict] = []

    def score(cfg: Config) -> tuple:
        o = run_zoattack(method, net, x, y, norm, eps, budget, cfg, seed, max_batch)
        s = int(o.success.sum())
        q_all = float(
            torch.where(o.success, o.queries, torch.full_like(o.queries, budget)).double().mean()
        )
        trials.append(
            {
                "method": method,
                "norm": norm,
                **cfg.to_dict(),
                "config": cfg.label(method, norm, eps),
                "successes": s,
                "images": len(y),
                "mean_queries_all": q_all,
                "wall_s": o.wall,
            }
        )
        log(
            f"    tune {method:10s} {cfg.label(method, norm, eps):40s} {s:3d}/{len(y)} "
            f"meanQ(all) {q_all:6.0f}  {o.wall:5.1f}s"
        )
        return (s, -q_all)

    best, best_score = None, None

    def consider(cfg: Config) -> None:
        nonlocal best, best_score
        sc = score(cfg)
        if best_score is None or sc > best_score:
            best, best_score = cfg, sc

    for sub in SUBSPACES:
        consider(Config(subspace=sub, source="tuned"))
    if level == "full":
        base = best
        for mult in (0.5, 2.0):
            consider(Config(subspace=base.subspace, lr_mult=mult, source="tuned"))
    base = best
    # Alternatives keep the rule's paper estimator (issue 12): the other finite difference
    # (LIZO's estimator is forward-only), ZO-signSGD's momentum, ReLIZO's Armijo search.
    extras: list[Config] = []
    if method == "lizo":
        extras = [Config(base.subspace, base.lr_mult, line_search="armijo", source="tuned")]
    else:
        other = "forward" if (base.difference or "forward") == "central" else "central"
        extras = [Config(base.subspace, base.lr_mult, difference=other, source="tuned")]
        if method == "zo_signsgd":
            extras.append(Config(base.subspace, base.lr_mult, momentum=0.9, source="tuned"))
    for cfg in extras:
        consider(cfg)
    assert best is not None
    return best, trials


def config_from_dict(d: dict) -> Config:
    return Config(
        subspace=d.get("subspace", "full"),
        lr_mult=float(d.get("lr_mult", 1.0)),
        estimator=d.get("estimator"),
        momentum=d.get("momentum"),
        line_search=d.get("line_search"),
        source=d.get("source", "file"),
        mu=d.get("mu"),
        difference=d.get("difference"),
    )


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--victims", nargs="+", default=["small_cnn", "resnet20"])
    p.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument("--eps-linf", type=float, default=DEFAULT_EPS["linf"])
    p.add_argument("--eps-l2", type=float, default=DEFAULT_EPS["l2"])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument(
        "--weights",
        nargs="*",
        default=[],
        metavar="NAME=FILE",
        help="victim weights other than the shipped ones",
    )
    p.add_argument(
        "--tune",
        choices=["off", "subspace", "full"],
        default="full",
        help="gradient rules: subspace grid (+ lr x{0.5,2}) + alternatives, on held-out images",
    )
    p.add_argument("--tune-images", type=int, default=20)
    p.add_argument("--tune-budget", type=int, default=1000)
    p.add_argument(
        "--tune-on",
        choices=["first", "each"],
        default="first",
        help="tune on the first victim only (reused for the others) or on each",
    )
    p.add_argument(
        "--configs",
        type=Path,
        default=None,
        help="tuning.json of an earlier run: reuse its choices, skip tuning",
    )
    p.add_argument("--zoo-images", type=int, default=20)
    p.add_argument("--zoo-max-budget", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write results.json/.csv here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small_cnn, linf, 1000, 30 images, sign/square/zo_signsgd + "
        "torchattacks Square, no tuning (< 2 minutes)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.victims, a.norms, a.budgets, a.images = ["small_cnn"], ["linf"], [1000], 30
        a.methods, a.peers, a.tune = (
            ["sign", "square", "zo_signsgd"],
            ["torchattacks_square"],
            "off",
        )
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    vers = versions("torchattacks", "art")
    log("command: " + command_line())
    log("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in vers.items()))
    load = load_average()
    mach = metadata()["machine"]
    log(
        f"device: cpu ({mach['cpu']}), os.cpu_count "
        f"{mach['cpu_count']}, torch threads {torch.get_num_threads()}, load average "
        f"{', '.join(f'{v:.1f}' for v in load) if load else '?'}"
    )
    log(
        f"grid: victims {args.victims} norms {args.norms} budgets {args.budgets} images "
        f"{args.images} methods {args.methods} peers {args.peers} tune {args.tune} seed {args.seed}"
    )
    weights = dict(w.split("=", 1) for w in args.weights)
    eps_of = {"linf": args.eps_linf, "l2": args.eps_l2}
    rows: list[dict] = []
    tuned: dict[str, dict[str, dict[str, Any]]] = {}
    tune_trials: list[dict] = []
    victim_files: dict[str, dict[str, str]] = VICTIM_FILES
    if args.configs is not None:
        tuned = json.loads(args.configs.read_text())["choices"]
        log(f"configs from {args.configs}")

    for victim in args.victims:
        try:
            kw = {"weights": weights[victim]} if victim in weights else {"pretrained": True}
            net = create_model(victim, dataset=args.dataset, device="cpu", **kw)
        except Exception as exc:
            log(f"\n== {victim}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})")
            for norm in args.norms:
                for b in args.budgets:
                    rows.append(
                        skipped_row(
                            victim,
                            norm,
                            eps_of[norm],
                            b,
                            "*",
                            "victim",
                            f"victim not available ({type(exc).__name__})",
                        )
                    )
            continue
        wfile = (
            Path(weights[victim])
            if victim in weights
            else weights_dir() / weights_filename(victim, args.dataset)
        )
        sha = hashlib.sha256(wfile.read_bytes()).hexdigest() if wfile.is_file() else "?"
        victim_files[victim] = {"weights": str(wfile), "sha256": sha}
        log(f"\n== {victim}: weights {wfile} (sha256 {sha[:12]})")
        n_tune = args.tune_images if args.tune != "off" else 0
        x, y, xt, yt, span = select_images(net, args.dataset, args.images, n_tune)
        profile = RawProfile(net, tuple(x.shape[1:]))
        log(
            f"   {len(y)} initially-correct images (first {span} test images), "
            f"{len(yt)} held-out tuning images; raw forward "
            f"{profile.rate(64):.0f}/s at batch 64, {profile.rate(1024):.0f}/s at 1024"
        )
        for norm in args.norms:
            eps = eps_of[norm]
            # Attribution needs clean images further apart than 2 eps.
            flat = x.flatten(1)
            dmat = torch.cdist(flat, flat, p=math.inf if norm == "linf" else 2.0)
            dmat.fill_diagonal_(math.inf)
            if float(dmat.min()) <= 2 * eps:
                log(
                    f"  warning: two clean images within 2 eps ({float(dmat.min()):.3f}); ART's "
                    "per-image attribution may be ambiguous"
                )
            # ---- configurations for the gradient rules
            choices = tuned.setdefault(victim, {}).setdefault(norm, {})
            src_victim = args.victims[0] if args.tune_on == "first" else victim
            for m in args.methods:
                if m not in GRADIENT_RULES or m in choices:
                    continue
                reuse = tuned.get(src_victim, {}).get(norm, {}).get(m)
                if reuse is None and args.tune_on == "first":  # e.g. --configs from another victim
                    src_victim, reuse = next(
                        (
                            (v2, c[norm][m])
                            for v2, c in tuned.items()
                            if v2 != victim and m in c.get(norm, {})
                        ),
                        (src_victim, None),
                    )
                if reuse is not None and src_victim != victim:
                    choices[m] = {**reuse, "source": f"tuned on {src_victim}"}
                elif args.tune != "off" and len(yt):
                    log(
                        f"  tuning {m} ({norm}, {len(yt)} held-out images, budget "
                        f"{args.tune_budget})"
                    )
                    cfg, trials = tune(
                        m,
                        net,
                        xt,
                        yt,
                        norm,
                        eps,
                        args.tune_budget,
                        args.seed,
                        args.max_batch,
                        args.tune,
                    )
                    for t in trials:
                        t["victim"] = victim
                    tune_trials.extend(trials)
                    choices[m] = cfg.to_dict()
                    log(f"  -> {m}: {cfg.label(m, norm, eps)}")
                else:
                    choices[m] = Config.cli_default(m, norm, eps).to_dict()
            if args.out is not None:  # the tuning choices are reusable right away (--configs)
                write_outputs(args, rows, tuned, tune_trials, vers, t_start)
            for budget in args.budgets:
                log(f"\n-- {victim} {norm} eps={eps:g} budget {budget}")
                group: list[dict] = []
                for m in args.methods:
                    if m == "sign" and norm != "linf":
                        group.append(
                            skipped_row(victim, norm, eps, budget, m, "zoattack", "Linf only")
                        )
                        continue
                    cfg = config_from_dict(choices.get(m, {})) if m in GRADIENT_RULES else Config()
                    o = run_zoattack(
                        m, net, x, y, norm, eps, budget, cfg, args.seed, args.max_batch
                    )
                    r = make_row(
                        victim,
                        norm,
                        eps,
                        budget,
                        m,
                        "zoattack",
                        cfg.label(m, norm, eps) + ("" if m in SEARCH_RULES else f" [{cfg.source}]"),
                        o,
                        profile,
                    )
                    group.append(r)
                    log(
                        f"  {m:20s} {r['successes']:3d}/{r['images']} median "
                        f"{fmt(r['median_queries'], '.0f'):>5s}  {r['wall_s']:6.1f}s  "
                        f"{r['inputs_per_s']:6.0f} in/s  {r['notes']}"
                    )
                for peer in args.peers:
                    module, runner = PEER_RUNNERS[peer]
                    if installed(module) is None:
                        group.append(
                            skipped_row(
                                victim, norm, eps, budget, peer, "peer", f"{module} not installed"
                            )
                        )
                        continue
                    xs, ys = x, y
                    if peer == "art_zoo":
                        if budget > args.zoo_max_budget:
                            group.append(
                                skipped_row(
                                    victim,
                                    norm,
                                    eps,
                                    budget,
                                    peer,
                                    "peer",
                                    f"budget > --zoo-max-budget {args.zoo_max_budget} (too slow)",
                                )
                            )
                            continue
                        xs, ys = x[: args.zoo_images], y[: args.zoo_images]
                    try:
                        o = runner(net, xs, ys, norm, eps, budget, args.seed)
                    except Exception as exc:
                        group.append(
                            skipped_row(
                                victim,
                                norm,
                                eps,
                                budget,
                                peer,
                                "peer",
                                f"error {type(exc).__name__}: {exc}"[:200],
                            )
                        )
                        log(f"  {peer}: error {exc!r}")
                        continue
                    cfg_label = {
                        "torchattacks_square": "p_init 0.8, margin, 1 restart",
                        "art_square": "p_init 0.8, 1 restart",
                        "art_zoo": f"first {len(ys)} images",
                    }[peer]
                    r = make_row(victim, norm, eps, budget, peer, "peer", cfg_label, o, profile)
                    group.append(r)
                    log(
                        f"  {peer:20s} {r['successes']:3d}/{r['images']} median "
                        f"{fmt(r['median_queries'], '.0f'):>5s}  {r['wall_s']:6.1f}s  "
                        f"{r['inputs_per_s']:6.0f} in/s  {r['notes']}"
                    )
                rows.extend(group)
                if args.out is not None:  # partial results survive an interrupted run
                    write_outputs(args, rows, tuned, tune_trials, vers, t_start)

    add_ratios(rows)
    log(
        "\n## Results (success over initially-correct images; queries over successes; every "
        "scored input counts, the clean check included)"
    )
    log(table(rows))
    if tuned:
        log("\n## Gradient-rule configurations (chosen on held-out images)")
        for victim, per_norm in tuned.items():
            for norm, per_m in per_norm.items():
                for m, c in per_m.items():
                    log(
                        f"  {victim:10s} {norm:5s} {m:10s} "
                        f"{config_from_dict(c).label(m, norm, eps_of[norm])}  [{c.get('source')}]"
                    )
    v = verdicts(rows)
    if v:
        log("\n## Targets")
        for line in v:
            log("  " + line)
    log(f"\ntotal wall time {time.perf_counter() - t_start:.0f}s")
    if args.out is not None:
        paths = write_outputs(args, rows, tuned, tune_trials, vers, t_start)
        log("wrote " + ", ".join(str(p) for p in paths))
    return 0


def write_outputs(args, rows, tuned, tune_trials, vers, t_start) -> list[Path]:
    out = out_dir(args.out)
    add_ratios(rows)
    meta = metadata(
        versions=vers,
        victims=VICTIM_FILES,
        threads=torch.get_num_threads(),
        device="cpu",
        seed=args.seed,
        images=args.images,
        elapsed_s=time.perf_counter() - t_start,
        counting_rule="every scored input counts (clean check included), charged to its "
        "image; success = misclassified at the returned point, inside the "
        "eps-ball and [0,1], queries <= budget; statistics over successes",
    )
    return [
        write_json(out / "results.json", {"meta": meta, "rows": rows}),
        write_csv(out / "results.csv", rows),
        write_json(out / "tuning.json", {"choices": tuned, "trials": tune_trials}),
    ]


if __name__ == "__main__":
    sys.exit(main())
