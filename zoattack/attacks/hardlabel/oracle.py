"""The labels-only membership oracle every decision attack talks to, and their results.

Counting rule: one membership question ("is this point adversarial?") = one input scored by
the black box = one query in that image's ledger. Clean checks, start checks, every probe of
a line or binary search count alike. The oracle refuses a question its image cannot pay for
before anything is scored, so an image can never exceed the attack's budget.

The oracle only ever holds a :class:`~zoattack.blackbox.BlackBox` with ``output="labels"``:
the model's scores never reach attack code. It also keeps, per image, the closest adversarial
point it has been shown (best-so-far, ART #923) with the queries spent when the distance
first improved, so every attack reports exactly the points that were checked by the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from zoattack.blackbox import BlackBox
from zoattack.errors import QueryBudgetExceeded
from zoattack.norms import NORMS, distance

STOP_REASONS = ("misclassified", "no_start", "budget", "steps", "success")


def check_labels_only(blackbox: BlackBox) -> None:
    if blackbox.output != "labels":
        raise ValueError(
            "decision (hard-label) attacks need a black box returning labels only, "
            f"not {blackbox.output}; wrap the model with BlackBox(model, output='labels') "
            "or use a score-based attack"
        )


class LabelOracle:
    """Answers "is this point adversarial?" for N images, one query per point.

    Args:
        blackbox: a ``BlackBox`` with ``output="labels"`` (anything else raises ValueError).
        x0: clean images ``(N, C, H, W)`` in [0, 1].
        label: true labels ``(N,)``.
        budget: queries each image may spend from now on (counted from the ledger as it is
            when the oracle is built, so a resumed ledger keeps its history).
        norm: ``"l2"`` or ``"linf"``: the distance the attack minimises and reports.
        eps: the success threshold: ``queries_to_eps`` records when an image's best
            distance first fell to ``eps`` or below.
        target: target classes ``(N,)`` (targeted: adversarial = classified as target) or
            None (untargeted: adversarial = not classified as ``label``).

    Shapes: ``ask(points (M, C, H, W), owner (M,)) -> bool (M,)``; ``owner`` holds image
    indices ``0..N-1``.
    """

    def __init__(
        self,
        blackbox: BlackBox,
        x0: Tensor,
        label: Tensor,
        *,
        budget: int,
        norm: str,
        eps: float,
        target: Tensor | None = None,
    ) -> None:
        check_labels_only(blackbox)
        if norm not in NORMS:
            raise ValueError(f"norm must be linf or l2, got {norm!r}")
        if budget < 1:
            raise ValueError(f"budget must be >= 1 query per image, got {budget}")
        self.blackbox = blackbox
        self.x0, self.label, self.target = x0, label, target
        self.budget, self.norm, self.eps = int(budget), norm, float(eps)
        n = x0.shape[0]
        self.n = n
        self._ids = torch.arange(n)
        self.start_q = blackbox.queries_of(self._ids).clone()
        dev = x0.device
        self.best_dist = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        self.x_best = x0.clone()
        # the model's label of x_best (as answered when it was asked; -1 until found)
        self.best_pred = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.found = torch.zeros(n, dtype=torch.bool, device=dev)
        self.queries_to_eps = torch.full((n,), -1, dtype=torch.int64)
        self.curve: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        self.asked = 0  # membership questions answered (all images), for tests

    # ----------------------------------------------------------------- ledger
    def spent(self, ids: Tensor | None = None) -> Tensor:
        """Queries spent since the oracle was built, per image (``int64``, CPU)."""
        ids = self._ids if ids is None else ids.cpu()
        return self.blackbox.queries_of(ids) - self.start_q[ids]

    def remaining(self, ids: Tensor | None = None) -> Tensor:
        """Questions each image may still ask (``int64``, CPU); the black box's own budget,
        when it has one, caps it too."""
        ids = self._ids if ids is None else ids.cpu()
        left = self.budget - self.spent(ids)
        return torch.minimum(left, self.blackbox.remaining(ids))

    def affordable(self, owner: Tensor) -> Tensor:
        """Bool ``(M,)``: which questions of a ragged batch fit, earliest first per image."""
        owner_cpu = owner.cpu()
        if not owner_cpu.numel():
            return torch.zeros(0, dtype=torch.bool, device=owner.device)
        # rank of each row among the rows of the same image (stable: earlier rows first)
        order = torch.argsort(owner_cpu, stable=True)
        sorted_owner = owner_cpu[order]
        first = torch.searchsorted(sorted_owner, sorted_owner, right=False)
        rank = torch.empty_like(owner_cpu)
        rank[order] = torch.arange(len(owner_cpu)) - first
        return (rank < self.remaining(owner_cpu)).to(owner.device)

    # ---------------------------------------------------------------- queries
    def is_adversarial(self, pred: Tensor, owner: Tensor) -> Tensor:
        if self.target is None:
            return pred != self.label[owner]
        return pred == self.target[owner]

    def labels(self, points: Tensor, owner: Tensor) -> Tensor:
        """Top-1 labels ``(M,)`` of ``points``; refuses (nothing scored) past the budget."""
        owner = owner.to(self.x0.device)
        if points.shape[0] and not bool(self.affordable(owner).all()):
            over = torch.unique(owner[~self.affordable(owner)].cpu())
            raise QueryBudgetExceeded(over.tolist(), self.budget, (self.spent(over) + 1).tolist())
        pred = self.blackbox.query(points, owner.cpu()).to(self.x0.device)
        if pred.dtype != torch.int64 or pred.dim() != 1:
            raise AssertionError("internal error: the labels-only black box returned scores")
        self.asked += int(points.shape[0])
        return pred

    def ask(self, points: Tensor, owner: Tensor) -> Tensor:
        """Bool ``(M,)``: is each point adversarial for its image? Records improvements."""
        owner = owner.to(self.x0.device)
        if not points.shape[0]:
            return torch.zeros(0, dtype=torch.bool, device=self.x0.device)
        pred = self.labels(points, owner)
        adv = self.is_adversarial(pred, owner)
        self._record(points, owner, adv, pred)
        return adv

    def _record(self, points: Tensor, owner: Tensor, adv: Tensor, pred: Tensor) -> None:
        """Keep each image's closest adversarial point of this call when it improves on the
        best so far: batched over images by masks, then one host read for the curve."""
        m, n = owner.numel(), self.n
        dist = distance(points, self.x0.index_select(0, owner), self.norm)
        dist = torch.where(adv, dist, math.inf)
        best = torch.full((n,), math.inf, dtype=torch.float64, device=dist.device)
        best.scatter_reduce_(0, owner, dist, reduce="amin")
        better = best < self.best_dist
        # The first row of each image reaching its minimum this call.
        at_min = adv & (dist == best.index_select(0, owner))
        pos = torch.where(at_min, torch.arange(m, device=owner.device), m)
        first = torch.full((n,), m, dtype=torch.long, device=owner.device)
        first.scatter_reduce_(0, owner, pos, reduce="amin")
        hit = first.clamp_(max=m - 1)
        shape = (-1, *[1] * (points.dim() - 1))
        cand = points.index_select(0, hit).to(self.x_best.dtype)
        torch.where(better.view(shape), cand, self.x_best, out=self.x_best)
        torch.where(better, pred.index_select(0, hit), self.best_pred, out=self.best_pred)
        torch.where(better, best, self.best_dist, out=self.best_dist)
        self.found |= better
        # The one read: which images improved, to what, after how many queries.
        spent = self.spent().to(device=best.device, dtype=torch.float64)
        values = torch.stack([better.to(torch.float64), best, spent]).tolist()
        for i in (i for i, b in enumerate(values[0]) if b):
            q, d = int(values[2][i]), values[1][i]
            self.curve[i].append((q, d))
            if d <= self.eps and self.queries_to_eps[i] < 0:
                self.queries_to_eps[i] = q


@dataclass
class DecisionResult:
    """Per-image outcome of a decision attack (N images).

    Attributes:
        x_adv: the closest adversarial point found ``(N, C, H, W)`` (in [0, 1], checked by
            the model when it was asked), or the clean image where none was found.
        label, clean_pred: true labels and the clean predictions ``(N,)``.
        found: an adversarial point was found ``(N,)``.
        success: found and its distance (attack norm) is ``<= eps`` ``(N,)``.
        distance: distance of ``x_adv`` in the attack's norm, inf where none found ``(N,)``.
        l2, linf: both distances of ``x_adv`` (inf where none found) ``(N,)``.
        queries: queries spent per image ``(N,)``, clean check included.
        queries_to_eps: queries spent when the distance first fell to ``eps``, -1 if never.
        final_pred: the model's label of ``x_adv`` as answered when that point was asked
            (no extra query); the clean prediction where nothing adversarial was found.
        curve: per image, ``(queries, best distance)`` checkpoints, distance non-increasing.
        stop_reason: per image, one of ``misclassified``, ``no_start``, ``budget``,
            ``steps``, ``success`` (only with ``stop_at_eps``).
    """

    x_adv: Tensor
    label: Tensor
    clean_pred: Tensor
    found: Tensor
    success: Tensor
    distance: Tensor
    l2: Tensor
    linf: Tensor
    queries: Tensor
    queries_to_eps: Tensor
    curve: list[list[tuple[int, float]]]
    stop_reason: list[str]
    norm: str = "l2"
    eps: float = 0.0
    clean_correct: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    final_pred: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    target: Tensor | None = None  # target classes of a targeted attack

    def median_distance(self) -> float:
        """Median distance over the initially-correct images (inf counts as a failure)."""
        d = self.distance[self.clean_correct]
        return float(d.median()) if d.numel() else float("nan")


def build_result(oracle: LabelOracle, clean_pred: Tensor, reasons: list[str]) -> DecisionResult:
    """Assemble the result from the oracle's records; asserts the invariants."""
    queries = oracle.spent()
    if bool((queries > oracle.budget).any()):
        raise AssertionError("internal error: an image exceeded its query budget")
    found = oracle.found.clone()
    x = torch.where(found.view(-1, 1, 1, 1), oracle.x_best, oracle.x0)
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise AssertionError("internal error: an adversarial point left [0, 1]")
    inf = torch.full((oracle.n,), float("inf"), dtype=torch.float64, device=x.device)
    l2 = torch.where(found, distance(x, oracle.x0, "l2"), inf)
    linf = torch.where(found, distance(x, oracle.x0, "linf"), inf)
    dist = l2 if oracle.norm == "l2" else linf
    clean_correct = clean_pred == oracle.label
    if oracle.target is not None:
        clean_correct &= oracle.target != oracle.label
    reasons = list(reasons)
    for i in range(oracle.n):
        if not reasons[i]:
            reasons[i] = "budget"
        if reasons[i] != "misclassified" and not bool(found[i]):
            reasons[i] = "no_start"
    return DecisionResult(
        x_adv=x,
        label=oracle.label,
        clean_pred=clean_pred,
        found=found & clean_correct,
        success=found & clean_correct & (dist <= oracle.eps),
        distance=torch.where(clean_correct, dist, inf),
        l2=l2,
        linf=linf,
        queries=queries,
        queries_to_eps=oracle.queries_to_eps.clone(),
        curve=[list(c) for c in oracle.curve],
        stop_reason=reasons,
        norm=oracle.norm,
        eps=oracle.eps,
        clean_correct=clean_correct,
        final_pred=torch.where(found, oracle.best_pred, clean_pred),
        target=oracle.target,
    )
