"""What every decision attack shares: input checks, the clean check, the step loop's
bookkeeping (budget, steps, early stop at eps) and the result."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from zoattack.attacks.hardlabel.boundary import BoundaryDistance, random_start, targeted_start
from zoattack.attacks.hardlabel.oracle import (
    DecisionResult,
    LabelOracle,
    build_result,
    check_labels_only,
)
from zoattack.blackbox import BlackBox
from zoattack.norms import check_norm
from zoattack.registry import Registry

DECISION_ATTACKS: Registry[DecisionAttack] = Registry("attack")  # `zoattack list attacks`


@dataclass
class Run:
    """Mutable state of one attack run on N images (the attack's ``_attack`` drives it)."""

    oracle: LabelOracle
    generator: torch.Generator
    active: Tensor  # bool (N,): images still attacked
    reasons: list[str]
    max_steps: int | None
    stop_at_eps: bool
    x_init: Tensor | None
    callback: Callable[[int, Tensor], None] | None = None
    step: int = 0

    @property
    def targeted(self) -> bool:
        return self.oracle.target is not None

    def ids(self) -> Tensor:
        return self.active.nonzero().flatten()

    def stop(self, mask: Tensor, reason: str) -> None:
        """End the images where ``mask`` (bool ``(N,)``) holds, with ``reason``."""
        mask = mask & self.active
        for i in mask.nonzero().flatten().tolist():
            self.reasons[i] = reason
        self.active &= ~mask

    def next_step(self, cost: Tensor | int) -> bool:
        """Before a step: end images that cannot pay ``cost`` (per image ``(N,)`` or one
        number), reached ``eps`` (with ``stop_at_eps``) or ran ``max_steps``. Returns
        whether any image is left."""
        o = self.oracle
        if self.stop_at_eps:
            self.stop(o.found & (o.best_dist <= o.eps), "success")
        left = o.remaining().to(self.active.device)
        self.stop(left < cost if isinstance(cost, int) else left < cost.to(left.device), "budget")
        if self.max_steps is not None and self.step >= self.max_steps:
            self.stop(self.active.clone(), "steps")
        if self.callback is not None and self.step:
            self.callback(self.step, o.spent())
        self.step += 1
        return bool(self.active.any())


class DecisionAttack(abc.ABC):
    """Base of hard-label attacks: ``run(blackbox, x0, label, ...)`` -> :class:`DecisionResult`.

    Subclasses set ``name`` and ``norms`` and implement :meth:`_attack`, which finds starts
    for ``run.ids()`` and improves them until :meth:`Run.next_step` says stop. Everything
    they learn about the model comes from ``run.oracle`` (labels only).
    """

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("l2", "linf")

    def run(
        self,
        blackbox: BlackBox,
        x0: Tensor,
        label: Tensor,
        *,
        generator: torch.Generator,
        norm: str,
        eps: float,
        budget: int,
        target: Tensor | int | None = None,
        x_init: Tensor | None = None,
        max_steps: int | None = None,
        stop_at_eps: bool = False,
        callback: Callable[[int, Tensor], None] | None = None,
    ) -> DecisionResult:
        """Attack images ``x0`` ``(N, C, H, W)`` in [0, 1] with true labels ``label`` ``(N,)``.

        Args:
            blackbox: a labels-only black box (``output="labels"``).
            generator: the only randomness used (on ``x0``'s device).
            norm, eps: the distance minimised (``l2``/``linf``) and the success threshold.
            budget: membership queries per image, the clean check included (>= 2).
            target: target classes ``(N,)`` or one class index (targeted; then ``x_init``,
                images the model should put in the target class, is required), else None.
            x_init: start images ``(N, C, H, W)`` (targeted); each is checked with one query.
            max_steps: stop after this many steps (None: only the budget stops).
            stop_at_eps: end an image as soon as its distance is ``<= eps`` ("success").
            callback: ``callback(step, queries (N,))`` after every step.

        Images the model misclassifies (or already puts in the target class) cost their one
        clean-check query and end with ``misclassified``.
        """
        norm = check_norm(norm, eps)
        check_labels_only(blackbox)
        if norm not in self.norms:
            raise ValueError(f"the {self.name} attack supports {', '.join(self.norms)}, not {norm}")
        if isinstance(budget, bool) or int(budget) != budget or budget < 2:
            raise ValueError(f"budget must be an integer >= 2 queries per image, got {budget}")
        if x0.dim() != 4:
            raise ValueError(f"images must be shaped (N, C, H, W), got {tuple(x0.shape)}")
        if float(x0.min()) < 0 or float(x0.max()) > 1:
            raise ValueError("images must lie in [0, 1]; normalisation belongs inside the model")
        if generator.device.type != x0.device.type:
            raise ValueError(f"generator is on {generator.device} but images on {x0.device}")
        n = x0.shape[0]
        label = label.to(x0.device).long()
        if isinstance(target, int):
            target = torch.full_like(label, target)
        if target is not None:
            target = target.to(x0.device).long()
            if x_init is None:
                raise ValueError(
                    "targeted decision attacks start from an image of the target class: "
                    "pass x_init (e.g. a data-set image the model labels as the target)"
                )
        if x_init is not None:
            if tuple(x_init.shape) != tuple(x0.shape):
                raise ValueError(
                    f"x_init must be shaped like the images {tuple(x0.shape)}, "
                    f"got {tuple(x_init.shape)}"
                )
            if float(x_init.min()) < 0 or float(x_init.max()) > 1:
                raise ValueError("x_init must lie in [0, 1]")
            x_init = x_init.to(x0)
        oracle = LabelOracle(
            blackbox, x0, label, budget=int(budget), norm=norm, eps=eps, target=target
        )
        ids = torch.arange(n, device=x0.device)
        clean_pred = oracle.labels(x0, ids)  # the clean check: one query per image
        correct = clean_pred == label
        if target is not None:
            correct &= target != label
        reasons = ["" if bool(c) else "misclassified" for c in correct.tolist()]
        run = Run(
            oracle=oracle,
            generator=generator,
            active=correct.clone(),
            reasons=reasons,
            max_steps=max_steps,
            stop_at_eps=stop_at_eps,
            x_init=x_init,
            callback=callback,
        )
        if bool(run.active.any()):
            self._attack(run)
        return build_result(oracle, clean_pred, run.reasons)

    @abc.abstractmethod
    def _attack(self, run: Run) -> None:
        """Find starts for ``run.ids()`` and improve them; end images via ``run``."""

    def after_start(self, run: Run, start_found: Tensor) -> None:
        """End images ``run.ids()`` whose start search failed (bool mask over all N)."""
        run.stop(~start_found & run.active, "no_start")

    def find_starts(
        self, run: Run, obj: BoundaryDistance, *, n_init: int, max_init: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Starts on the boundary-distance objective for ``run.ids()``: the targeted start
        images when the run has them, else OPT's uniform-noise directions; images with none
        end as ``no_start``. Returns ``(ids, theta0, g0)`` (``g0`` inf where none was found)."""
        ids = run.ids()
        if run.x_init is not None:
            theta0, g0 = targeted_start(obj, ids, run.x_init.index_select(0, ids))
        else:
            theta0, g0 = random_start(obj, ids, run.generator, n_init=n_init, max_init=max_init)
        found = torch.zeros_like(run.active)
        found[ids] = g0.isfinite()
        self.after_start(run, found)
        return ids, theta0, g0


def check_int(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return int(value)


def check_float(name: str, value: float, low: float = 0.0, high: float = float("inf")) -> float:
    v = float(value)
    if not (low < v < high):
        raise ValueError(f"{name} must be in ({low:g}, {high:g}), got {value}")
    return v


def target_starts(
    images: Tensor, labels: Tensor, target: Tensor, generator: torch.Generator
) -> Tensor:
    """Start images for targeted decision attacks: for each entry of ``target`` ``(N,)``, a
    random image of ``images`` ``(M, C, H, W)`` whose data-set label is that class.

    Costs no queries: whether the model agrees is the attack's start check (one query per
    image; ``no_start`` if it does not). Raises ValueError if a target class has no image.
    """
    out = torch.empty(len(target), *images.shape[1:], dtype=images.dtype, device=images.device)
    for cls in torch.unique(target).tolist():
        pool = (labels == cls).nonzero().flatten()
        if not pool.numel():
            raise ValueError(f"no image of target class {cls} to start a targeted attack from")
        rows = (target == cls).nonzero().flatten()
        pick = torch.randint(len(pool), (len(rows),), generator=generator, device=generator.device)
        out[rows.to(out.device)] = images[pool[pick.to(pool.device)]]
    return out
