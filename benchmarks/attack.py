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
--threads 1 --out bench_out``. Peers: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import (
    Meter,
    RawProfile,
    command_line,
    fmt,
    installed,
    load_average,
    log,
    markdown_table,
    metadata,
    out_dir,
    set_threads,
    versions,
    write_csv,
    write_json,
)
from torch import Tensor, nn

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.data import load_dataset
from zoattack.jobs.attack import default_lr, tuned_mu
from zoattack.models import create_model
from zoattack.models.weights import weights_dir, weights_filename
from zoattack.norms import DEFAULT_EPS
from zoattack.norms import inside as inside_ball
from zoattack.optim import OPTIMIZERS, create_optimizer
from zoattack.results.rows import summarize
from zoattack.seeding import make_generator

# Rules come from the registry (flag ``search``: estimator-free search rules); this order only
# fixes how tables list them (a rule registered later is appended).
_ORDER = ("zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo", "square", "sign")


def _ordered(names: list[str]) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)))


GRADIENT_RULES = _ordered([e.name for e in OPTIMIZERS if not e.flags.get("search")])
SEARCH_RULES = _ordered(OPTIMIZERS.names(search=True))
ALL_METHODS = GRADIENT_RULES + SEARCH_RULES
PEERS = ("torchattacks_square", "art_square", "art_zoo")
SUBSPACES = ("full", "tile:7", "tile:14", "dct:14", "tile:7>tile:14>full")
REFERENCE = "torchattacks_square"
VICTIM_FILES: dict[str, dict[str, str]] = {}


# --------------------------------------------------------------------------- utilities
def predict(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """Uncounted evaluation forward (image selection and verification only)."""
    with torch.inference_mode():
        return torch.cat([net(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


class AttributingMeter(Meter):
    """Meter that charges every scored row to the nearest clean image and records, per image,
    the count at the first row that fools the model inside the threat model (eps-ball, [0, 1])."""

    def __init__(self, net: nn.Module, x0: Tensor, y: Tensor, norm: str, eps: float) -> None:
        super().__init__(net)
        self.x0 = x0.flatten(1).float()
        self.sq = (self.x0**2).sum(1)
        self.x0_img, self.y, self.norm, self.eps = x0, y, norm, eps
        n = len(y)
        self.counts = torch.zeros(n, dtype=torch.long)
        self.first_fool = torch.full((n,), -1, dtype=torch.long)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        with torch.no_grad():
            flat = x.detach().flatten(1).float().cpu()
            d2 = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.x0.T + self.sq
            owner = d2.argmin(1)
            pred = out.detach().argmax(1).cpu()
            fooled = (pred != self.y[owner]) & inside_ball(
                x.detach().cpu(), self.x0_img[owner], self.norm, self.eps
            )
            before = self.counts.clone()
            self.counts.index_add_(0, owner, torch.ones_like(owner))
            for r in fooled.nonzero().flatten().tolist():
                i = int(owner[r])
                if self.first_fool[i] < 0:
                    self.first_fool[i] = before[i] + int((owner[: r + 1] == i).sum())
        return out


# --------------------------------------------------------------------------- configs
@dataclass
class Config:
    """One zoattack configuration (gradient rules) or the fixed search-rule setting."""

    subspace: str = "full"
    lr_mult: float = 1.0
    estimator: str | None = None
    momentum: float | None = None
    line_search: str | None = None
    source: str = "default"
    mu: float | None = None
    difference: str | None = None

    @classmethod
    def cli_default(cls, method: str, norm: str, eps: float) -> Config:
        """What `zoattack run` uses for this rule and norm (the rule's registry entry)."""
        t = OPTIMIZERS.get(method).tuned(norm)
        return cls(
            subspace=t.subspace or "full",
            estimator=t.estimator,
            momentum=t.momentum,
            mu=tuned_mu(method, norm, eps),
            difference=t.difference,
            source="zoattack run default",
        )

    def label(self, method: str, norm: str, eps: float) -> str:
        if method in SEARCH_RULES:
            return f"lr=eps={eps:g}"
        parts = [self.subspace, f"lr={lr_of(method, norm, eps, self):.3g}"]
        if self.estimator:
            parts.append(f"est={self.estimator}")
        if self.momentum:
            parts.append(f"mom={self.momentum:g}")
        if self.line_search:
            parts.append(f"ls={self.line_search}")
        if self.mu is not None:
            parts.append(f"mu={self.mu:g}")
        if self.difference:
            parts.append(self.difference)
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subspace": self.subspace,
            "lr_mult": self.lr_mult,
            "estimator": self.estimator,
            "momentum": self.momentum,
            "line_search": self.line_search,
            "mu": self.mu,
            "difference": self.difference,
            "source": self.source,
        }


def lr_of(method: str, norm: str, eps: float, cfg: Config) -> float:
    return default_lr(method, norm, eps) * cfg.lr_mult


def build_rule(method: str, norm: str, eps: float, budget: int, cfg: Config):
    if method in SEARCH_RULES:  # radius default_lr (= eps), as `zoattack run`
        return create_optimizer(method, lr=default_lr(method, norm, eps), norm=norm, budget=budget)
    kw: dict[str, Any] = {"lr": lr_of(method, norm, eps, cfg), "estimator": cfg.estimator}
    if cfg.momentum is not None:
        kw["momentum"] = cfg.momentum
    if cfg.line_search is not None:
        kw["line_search"] = cfg.line_search
    if cfg.mu is not None:
        kw["mu"] = cfg.mu
    if cfg.difference is not None:
        kw["difference"] = cfg.difference
    return create_optimizer(method, **kw)


# --------------------------------------------------------------------------- runners
@dataclass
class Outcome:
    success: Tensor  # (N,) bool, verified
    queries: Tensor  # (N,) long, per-image queries under the common rule
    wall: float
    meter: Meter
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def verify(
    net: nn.Module,
    x_adv: Tensor,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    queries: Tensor,
    budget: int,
) -> tuple[Tensor, int]:
    """Success = misclassified at the returned point, inside the ball and [0, 1], within
    budget. Returns the mask and the number of images whose point left the threat model."""
    ok_ball = inside_ball(x_adv, x, norm, eps)
    fooled = predict(net, x_adv) != y
    return fooled & ok_ball & (queries <= budget), int((~ok_ball).sum())


def run_zoattack(
    method: str,
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    budget: int,
    cfg: Config,
    seed: int,
    max_batch: int,
) -> Outcome:
    meter = Meter(net)
    rule = build_rule(method, norm, eps, budget, cfg)
    bb = BlackBox(
        meter, output="logits", budget=budget, max_batch=max_batch, input_shape=tuple(x.shape[1:])
    )
    gen = make_generator(seed, x.device)
    subspace = "full" if method in SEARCH_RULES else cfg.subspace
    t0 = time.perf_counter()
    res = run_attack(
        bb,
        x,
        y,
        rule,
        generator=gen,
        norm=norm,
        eps=eps,
        budget=budget,
        loss="margin",
        subspace=subspace,
    )
    wall = time.perf_counter() - t0
    summary = summarize(res, wall_seconds=wall, total_queries=bb.total_queries)
    ok, left = verify(net, res.x_adv, x, y, norm, eps, res.queries, budget)
    notes = []
    if not torch.equal(ok, res.success):
        notes.append(
            f"verification disagrees with run_attack on {int((ok != res.success).sum())} images"
        )
    if left:
        notes.append(f"{left} returned points outside the ball")
    if bb.total_queries != meter.rows:
        notes.append(f"ledger {bb.total_queries} != rows scored {meter.rows}")
    return Outcome(ok & res.success, res.queries, wall, meter, notes, {"zoattack_summary": summary})


def run_torchattacks_square(
    net: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, budget: int, seed: int
) -> Outcome:
    import torchattacks

    meter = Meter(net)
    atk = torchattacks.Square(
        meter,
        norm="Linf" if norm == "linf" else "L2",
        eps=eps,
        n_queries=budget - 2,
        n_restarts=1,
        p_init=0.8,
        loss="margin",
        resc_schedule=True,
        seed=seed,
        verbose=False,
    )
    t0 = time.perf_counter()
    # What Square.perturb does for one restart, keeping the per-image counter it discards.
    atk.init_hyperparam(x)
    with torch.no_grad():
        clean = meter(x).argmax(1)  # the clean check perturb makes
    torch.random.manual_seed(seed)
    n_q, x_best = atk.attack_single_run(x, y)
    wall = time.perf_counter() - t0
    queries = n_q.long().cpu() + 1
    notes = []
    if int(n_q.sum()) + len(y) != meter.rows:
        notes.append(f"Square's counter {int(n_q.sum()) + len(y)} != rows scored {meter.rows}")
    if not bool((clean == y).all()):
        notes.append("clean check disagrees with selection")
    ok, left = verify(net, x_best, x, y, norm, eps, queries, budget)
    if left:
        notes.append(f"{left} returned points outside the ball")
    return Outcome(
        ok,
        queries,
        wall,
        meter,
        notes,
        {
            "query_source": "Square's attack_single_run counter + 1 clean check; "
            f"n_queries={budget - 2}"
        },
    )


def _art_classifier(module: nn.Module, x: Tensor):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def run_art_square(
    net: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, budget: int, seed: int
) -> Outcome:
    import numpy as np
    from art.attacks.evasion import SquareAttack

    meter = AttributingMeter(net, x, y, norm, eps)
    clf = _art_classifier(meter, x)
    # Per unfooled image: 1 (start check) + 2 (init) + 3 per iteration.
    max_iter = max(1, (budget - 3) // 3)
    atk = SquareAttack(
        clf,
        norm=np.inf if norm == "linf" else 2,
        eps=eps,
        max_iter=max_iter,
        p_init=0.8,
        nb_restarts=1,
        batch_size=128,
        verbose=False,
    )
    np.random.seed(seed)
    t0 = time.perf_counter()
    adv = atk.generate(x.numpy(), y=np.eye(10, dtype=np.float32)[y.numpy()])
    wall = time.perf_counter() - t0
    return _art_outcome(
        net,
        meter,
        torch.from_numpy(adv),
        x,
        y,
        norm,
        eps,
        budget,
        wall,
        f"AttributingMeter; max_iter={max_iter}",
    )


def run_art_zoo(
    net: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, budget: int, seed: int
) -> Outcome:
    import numpy as np
    from art.attacks.evasion import ZooAttack

    meter = AttributingMeter(net, x, y, norm, eps)
    clf = _art_classifier(meter, x)
    nb_parallel = 128
    max_iter = max(1, (budget - 2) // (2 * nb_parallel + 1))
    atk = ZooAttack(
        clf,
        confidence=0.0,
        targeted=False,
        learning_rate=1e-2,
        max_iter=max_iter,
        binary_search_steps=1,
        initial_const=1e-3,
        abort_early=True,
        use_resize=False,
        use_importance=False,
        nb_parallel=nb_parallel,
        batch_size=1,
        variable_h=1e-4,
        verbose=False,
    )
    np.random.seed(seed)
    t0 = time.perf_counter()
    adv = atk.generate(x.numpy(), y=np.eye(10, dtype=np.float32)[y.numpy()])
    wall = time.perf_counter() - t0
    return _art_outcome(
        net,
        meter,
        torch.from_numpy(adv).float(),
        x,
        y,
        norm,
        eps,
        budget,
        wall,
        f"AttributingMeter; max_iter={max_iter}, nb_parallel={nb_parallel}, "
        "ART defaults otherwise (lr 1e-2, c 1e-3), use_resize/importance off",
    )


def _art_outcome(
    net, meter: AttributingMeter, adv: Tensor, x, y, norm, eps, budget, wall, source: str
) -> Outcome:
    first = meter.first_fool
    queries = torch.where(first > 0, first, meter.counts)
    ok, left = verify(net, adv, x, y, norm, eps, queries, budget)
    notes = []
    if left:
        notes.append(f"{left} returned points outside the eps-ball (counted as failures)")
    over = int((meter.counts > budget).sum())
    if over:
        notes.append(
            f"{over} images scored more than the budget in total "
            f"(max {int(meter.counts.max())}); only queries up to the first fooling "
            "point are charged to successes"
        )
    return Outcome(
        ok,
        queries,
        wall,
        meter,
        notes,
        {"query_source": source, "total_rows_per_image_max": int(meter.counts.max())},
    )


PEER_RUNNERS = {
    "torchattacks_square": ("torchattacks", run_torchattacks_square),
    "art_square": ("art", run_art_square),
    "art_zoo": ("art", run_art_zoo),
}


# --------------------------------------------------------------------------- rows
def make_row(
    victim: str,
    norm: str,
    eps: float,
    budget: int,
    method: str,
    kind: str,
    config: str,
    out: Outcome,
    profile: RawProfile,
) -> dict:
    n = len(out.success)
    s = int(out.success.sum())
    q = out.queries[out.success].double()
    m = out.meter
    mean_batch = m.mean_batch
    rate = m.rows / max(out.wall, 1e-9)
    # The victim's own rate on this attack's calls, timed inside the run (the same batches,
    # the same moment, so CPU contention from other jobs hits both sides alike) ...
    raw = m.rate()
    # ... and a bare re-run of the same sequence of batch sizes afterwards (contention-prone).
    bare = m.rows / max(profile.seconds_for(m.batches), 1e-12)
    return {
        "victim": victim,
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "method": method,
        "kind": kind,
        "config": config,
        "status": "ok",
        "images": n,
        "successes": s,
        "success_rate": s / n if n else None,
        "mean_queries": float(q.mean()) if s else None,
        "median_queries": float(q.median()) if s else None,
        "wall_s": out.wall,
        "wall_per_success_s": out.wall / s if s else None,
        "scored_inputs": m.rows,
        "model_calls": m.calls,
        "mean_batch": mean_batch,
        "inputs_per_s": rate,
        "raw_inputs_per_s": raw,
        "rate_vs_raw": rate / raw,
        "bare_inputs_per_s": bare,
        "rate_vs_bare": rate / bare,
        "batch_max": max(m.batches, default=0),
        "notes": "; ".join(out.notes),
        **{k: v for k, v in out.extra.items() if not isinstance(v, dict)},
    }


def skipped_row(victim, norm, eps, budget, method, kind, why) -> dict:
    return {
        "victim": victim,
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "method": method,
        "kind": kind,
        "config": "",
        "status": f"skipped: {why}",
    }


def add_ratios(rows: list[dict]) -> None:
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r["method"] == REFERENCE and r["status"] == "ok":
            groups[(r["victim"], r["norm"], r["budget"], r["images"])] = r
    for r in rows:
        if r["status"] != "ok":
            continue
        ref = groups.get((r["victim"], r["norm"], r["budget"], r["images"]))
        if ref is None:
            continue
        r["d_success_pts"] = 100 * (r["success_rate"] - ref["success_rate"])
        if r["median_queries"] is not None and ref["median_queries"]:
            r["median_q_ratio"] = r["median_queries"] / ref["median_queries"]
        r["wall_ratio"] = r["wall_s"] / ref["wall_s"]
        if r["wall_per_success_s"] is not None and ref["wall_per_success_s"]:
            r["wall_per_success_ratio"] = r["wall_per_success_s"] / ref["wall_per_success_s"]


COLUMNS = [
    ("method", "method", None),
    ("config", "config", None),
    ("n", "images", None),
    ("succ%", "success_rate", "pct"),
    ("meanQ", "mean_queries", ".0f"),
    ("medQ", "median_queries", ".0f"),
    ("wall s", "wall_s", ".1f"),
    ("s/succ", "wall_per_success_s", ".3f"),
    ("in/s", "inputs_per_s", ".0f"),
    ("raw/s@b", "raw", None),
    ("rate/raw", "rate_vs_raw", ".2f"),
    ("dSucc pts", "d_success_pts", "+.0f"),
    ("medQ x", "median_q_ratio", ".2f"),
    ("wall x", "wall_ratio", ".2f"),
    ("s/succ x", "wall_per_success_ratio", ".2f"),
]


def table(rows: list[dict]) -> str:
    lines = []
    keys = sorted(
        {(r["victim"], r["norm"], r["budget"]) for r in rows}, key=lambda k: (k[0], k[1], k[2])
    )
    for victim, norm, budget in keys:
        group = [r for r in rows if (r["victim"], r["norm"], r["budget"]) == (victim, norm, budget)]
        eps = group[0]["eps"]
        lines.append(
            f"\n### {victim}  {norm} eps={eps:g}  budget {budget:,}  (ratios vs {REFERENCE})"
        )
        cells: list[list[str]] = []
        for r in group:
            if r["status"] != "ok":
                cells.append([r["method"], r["status"]] + [""] * (len(COLUMNS) - 2))
                continue
            row = []
            for _, key, spec in COLUMNS:
                if key == "raw":
                    row.append(f"{r['raw_inputs_per_s']:.0f}@{r['mean_batch']:.0f}")
                elif spec == "pct":
                    row.append(f"{100 * r[key]:.0f}" if r.get(key) is not None else "-")
                elif spec is None:
                    row.append(str(r.get(key, "")))
                else:
                    row.append(fmt(r.get(key), spec))
            cells.append(row)
        lines += markdown_table([c[0] for c in COLUMNS], cells)
        for r in group:
            if r.get("notes"):
                lines.append(f"  note [{r['method']}]: {r['notes']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- verdicts
def verdicts(rows: list[dict]) -> list[str]:
    out = []
    ok = [r for r in rows if r["status"] == "ok"]
    keys = sorted({(r["victim"], r["norm"], r["budget"]) for r in ok})

    def get(k, method):
        return next(
            (r for r in ok if (r["victim"], r["norm"], r["budget"]) == k and r["method"] == method),
            None,
        )

    def better(a, b) -> bool:  # success first, then mean queries over successes
        if a["successes"] != b["successes"]:
            return a["successes"] > b["successes"]
        return (a["mean_queries"] or math.inf) < (b["mean_queries"] or math.inf)

    for k in keys:
        tag = f"{k[0]} {k[1]} @{k[2]}"
        ref = get(k, REFERENCE)
        zo = [
            r for r in ok if (r["victim"], r["norm"], r["budget"]) == k and r["kind"] == "zoattack"
        ]
        if ref and zo:
            # PASS if any zoattack rule meets both conditions; otherwise show the best one.
            qual = [
                r
                for r in zo
                if r["d_success_pts"] >= 2 and (r.get("median_q_ratio") or math.inf) <= 0.5
            ]
            best = max(
                qual or zo, key=lambda r: (r["success_rate"], -(r["median_queries"] or math.inf))
            )
            hit = bool(qual)
            out.append(
                f"[{'PASS' if hit else 'FAIL'}] T1 best zoattack beats Square, {tag}: "
                f"{best['method']} {100 * best['success_rate']:.0f}% "
                f"({best['d_success_pts']:+.0f} pts, need >= +2), median "
                f"{fmt(best['median_queries'], '.0f')} vs "
                f"{fmt(ref['median_queries'], '.0f')} "
                f"(x{fmt(best.get('median_q_ratio'), '.2f')}, need <= 0.50)"
            )
        if ref and k[2] == 1000:
            for m in ("lizo", "radazo"):
                r = get(k, m)
                if r:
                    hit = r["d_success_pts"] >= -5
                    out.append(
                        f"[{'PASS' if hit else 'FAIL'}] T2 {m} within 5 pts of Square "
                        f"@1k, {tag}: {100 * r['success_rate']:.0f}% vs "
                        f"{100 * ref['success_rate']:.0f}% ({r['d_success_pts']:+.0f})"
                    )
        r = get(k, "square")
        if ref and r:
            mq = r.get("median_q_ratio")
            hit = abs(r["d_success_pts"]) <= 2 and mq is not None and abs(mq - 1) <= 0.10
            out.append(
                f"[{'PASS' if hit else 'FAIL'}] T3 zoattack square matches Square, {tag}: "
                f"{r['d_success_pts']:+.0f} pts, median x{fmt(mq, '.2f')}"
            )
        for m in ("lizo", "radazo"):
            r = get(k, m)
            for base in ("zo_sgd", "zo_adamm"):
                b = get(k, base)
                if r and b:
                    out.append(
                        f"[{'PASS' if better(r, b) else 'FAIL'}] T4 {m} beats {base}, "
                        f"{tag}: {100 * r['success_rate']:.0f}% / mean "
                        f"{fmt(r['mean_queries'], '.0f')} vs "
                        f"{100 * b['success_rate']:.0f}% / {fmt(b['mean_queries'], '.0f')}"
                    )
        for r in zo:
            hit = r["rate_vs_raw"] >= 0.9
            out.append(
                f"[{'PASS' if hit else 'FAIL'}] T5 throughput {r['method']}, {tag}: "
                f"{r['inputs_per_s']:.0f}/s = {r['rate_vs_raw']:.2f} x raw "
                f"{r['raw_inputs_per_s']:.0f}/s, the victim's own rate on the same calls "
                f"(mean batch {r['mean_batch']:.0f}; bare re-run {r['bare_inputs_per_s']:.0f}/s)"
            )
        if ref and zo:
            for r in zo:
                x = r.get("wall_per_success_ratio")
                if x is not None:
                    out.append(
                        f"[{'PASS' if x <= 1 else 'FAIL'}] T6 wall/success "
                        f"{r['method']}, {tag}: {r['wall_per_success_s']:.3f}s vs "
                        f"{ref['wall_per_success_s']:.3f}s (x{x:.2f})"
                    )
    return out


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
