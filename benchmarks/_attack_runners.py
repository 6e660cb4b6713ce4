"""Part of benchmarks/attack.py: the methods it compares (zoattack rules, torchattacks and ART
peers), their configurations and the per-method runners. Run the benchmark with
``python benchmarks/attack.py --quick`` (see that file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from _common import (
    Meter,
)
from torch import Tensor, nn

from zoattack.attacks import run_attack
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import default_lr, tuned_mu
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
