"""Universal perturbations: one delta for a set of images (ReLIZO / ZO-AdaMM experiments).

One objective evaluation scores every image once, so it costs one query *per image*; the
per-image budget therefore bounds the number of objective evaluations. Every evaluated
candidate is a legitimate universal perturbation, so the best one scored (highest fooling
rate, then lowest loss) is returned, not just the last iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from zoattack.blackbox import BlackBox
from zoattack.losses import attack_loss, is_adversarial
from zoattack.norms import check_norm, project
from zoattack.objective import feasible_prior
from zoattack.optim.base import ZORule
from zoattack.subspace import Subspace, SubspaceSchedule


class UniversalObjective:
    """``f(delta) = mean_i max(loss_i(clip(x_i + P(delta))), -kappa)`` over the images.

    ``kappa`` caps how much an already-fooled image contributes (C&W-style), so the search
    spends its effort on images that still resist. With a ``surrogate`` model the objective
    also offers ``surrogate_gradient`` (the transfer prior of the ``prior`` estimator): the
    gradient of this same objective with the surrogate's scores in place of the victim's,
    taken locally by autograd; it never touches the black box, so it costs no query.
    """

    def __init__(
        self,
        blackbox: BlackBox,
        x0: Tensor,
        label: Tensor,
        *,
        norm: str,
        eps: float,
        subspace: Subspace,
        loss: str = "margin",
        target: Tensor | None = None,
        kappa: float = 0.0,
        surrogate: torch.nn.Module | None = None,
    ) -> None:
        self.blackbox, self.x0, self.label, self.target = blackbox, x0, label, target
        self.surrogate = surrogate
        if surrogate is not None:
            self.surrogate_gradient = self._surrogate_gradient
        self.norm, self.eps, self.subspace, self.loss, self.kappa = norm, eps, subspace, loss, kappa
        self.images_idx = torch.arange(x0.shape[0])
        self.best_delta = torch.zeros_like(x0[0])
        self.best_fooled = torch.zeros(x0.shape[0], dtype=torch.bool)
        self.best_key = (-1, float("inf"))
        self.evaluations = 0

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        p, m = points.shape[0], self.x0.shape[0]
        delta = project(self.subspace.expand(points), self.norm, self.eps)  # (P, C, H, W)
        imgs = (self.x0.unsqueeze(0) + delta.unsqueeze(1)).clamp(0.0, 1.0)
        scores = self.blackbox.query(
            imgs.reshape(p * m, *self.x0.shape[1:]), self.images_idx.repeat(p)
        ).to(self.x0.device)
        if self.blackbox.output == "probs":
            scores = scores.clamp_min(1e-30).log()
        label = self.label.repeat(p)
        target = self.target.repeat(p) if self.target is not None else None
        losses = attack_loss(scores, label, kind=self.loss, target=target).view(p, m)
        fooled = is_adversarial(scores.argmax(1), label, target).view(p, m)
        value = losses.clamp_min(-self.kappa).mean(dim=1)
        self.evaluations += p
        self._keep_best(delta, fooled, value)
        return value

    def _surrogate_gradient(self, points: Tensor, owner: Tensor) -> Tensor:
        """``(P, *var_shape)``: autograd of the same objective (projection, subspace, clip,
        loss, kappa cap, mean over the images) on the surrogate's scores. Local and
        white-box: the black box, the best-candidate record and the evaluation count never
        see it."""
        assert self.surrogate is not None
        p, m = points.shape[0], self.x0.shape[0]
        with torch.enable_grad():
            var = points.detach().clone().requires_grad_(True)
            delta = project(self.subspace.expand(var), self.norm, self.eps)
            imgs = (self.x0.unsqueeze(0) + delta.unsqueeze(1)).clamp(0.0, 1.0)
            scores = self.surrogate(imgs.reshape(p * m, *self.x0.shape[1:]))
            target = self.target.repeat(p) if self.target is not None else None
            losses = attack_loss(scores, self.label.repeat(p), kind=self.loss, target=target)
            value = losses.view(p, m).clamp_min(-self.kappa).mean(dim=1)
            (grad,) = torch.autograd.grad(value.sum(), var)
        return feasible_prior(
            grad.detach(),
            points,
            self.subspace.expand(points.detach()),
            self.norm,
            self.eps,
            coordinatewise=not self.subspace.spec.startswith("dct:"),
        )

    def _keep_best(self, delta: Tensor, fooled: Tensor, value: Tensor) -> None:
        """Remember the best candidate scored so far: most images fooled, then lowest loss
        (the first one on ties). ``delta`` ``(P, C, H, W)``, ``fooled`` ``(P, M)``."""
        for j in range(delta.shape[0]):  # P is the handful of candidates of one step
            key = (int(fooled[j].sum()), -float(value[j]))
            if key > (self.best_key[0], -self.best_key[1]):
                self.best_key = (key[0], float(value[j]))
                self.best_delta = delta[j].clone()
                self.best_fooled = fooled[j].cpu().clone()


@dataclass
class UniversalResult:
    """``delta`` ``(C, H, W)``; ``fooled`` ``(M,)`` at ``delta`` (initially-correct images
    only; others False); ``queries`` per image; ``evaluations`` of the universal objective."""

    delta: Tensor
    fooled: Tensor
    clean_correct: Tensor
    fooling_rate: float | None
    queries: Tensor
    evaluations: int
    linf: float
    l2: float


def run_universal(
    blackbox: BlackBox,
    x0: Tensor,
    label: Tensor,
    rule: ZORule,
    *,
    generator: torch.Generator,
    norm: str,
    eps: float,
    budget: int,
    loss: str = "margin",
    target: Tensor | None = None,
    subspace: str = "full",
    kappa: float = 0.0,
    callback: Callable[[int, int, float], None] | None = None,
    surrogate: torch.nn.Module | None = None,
) -> UniversalResult:
    """Search one perturbation fooling as many of ``x0`` ``(M, C, H, W)`` as possible.

    ``budget`` is queries per image; the clean check costs each image one query, and only
    images the model gets right take part (others are reported as not fooled).
    ``surrogate``: a local white-box model whose gradient of the same universal objective
    the ``prior`` estimator uses (never queried through the black box).
    """
    norm = check_norm(norm, eps)
    if budget < 3:
        raise ValueError(f"budget must be >= 3 queries per image, got {budget}")
    if x0.dim() != 4:
        raise ValueError(f"images must be shaped (N, C, H, W), got {tuple(x0.shape)}")
    if kappa < 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    m = x0.shape[0]
    start_q = blackbox.queries_of(torch.arange(m)).clone()
    correct = _attackable(blackbox, x0, label, target)
    keep = correct.nonzero().flatten()
    # A coarse-to-fine schedule ("tile:7>full") switches on the queries spent per image, as
    # in per-image attacks (the rules' Linf defaults are schedules).
    schedule = SubspaceSchedule(subspace, tuple(x0.shape[1:]), budget)
    space = schedule.spaces[0]
    obj = UniversalObjective(
        # A sub-ledger over the attacked images: their ids in the main ledger are `keep`.
        _SubLedger(blackbox, keep),  # type: ignore[arg-type]  # duck-types the BlackBox calls used
        x0[keep],
        label[keep],
        norm=norm,
        eps=eps,
        subspace=space,
        loss=loss,
        target=None if target is None else target[keep],
        kappa=kappa,
        surrogate=surrogate,
    )
    _search(
        obj,
        rule,
        schedule,
        spent=lambda: blackbox.queries_of(keep.cpu()) - start_q[keep.cpu()],
        generator=generator,
        budget=budget,
        callback=callback,
    )
    fooled = torch.zeros(m, dtype=torch.bool)
    fooled[keep.cpu()] = obj.best_fooled
    delta = obj.best_delta
    return UniversalResult(
        delta=delta,
        fooled=fooled,
        clean_correct=correct.cpu(),
        fooling_rate=float(obj.best_fooled.float().mean()),
        queries=blackbox.queries_of(torch.arange(m)) - start_q,
        evaluations=obj.evaluations,
        linf=float(delta.abs().max()),
        l2=float(delta.norm()),
    )


def _attackable(blackbox: BlackBox, x0: Tensor, label: Tensor, target: Tensor | None) -> Tensor:
    """The clean check (1 query per image): images ``(M,)`` the model gets right and, for
    targeted attacks, whose label is not the target already. Refuses when there are none."""
    clean_pred = blackbox.query(x0, torch.arange(x0.shape[0])).argmax(dim=1).to(label.device)
    correct = clean_pred == label
    if target is not None:
        correct &= target != label
    if not bool(correct.any()):
        raise ValueError("the model misclassifies every image already; nothing to attack")
    return correct


def _search(
    obj: UniversalObjective,
    rule: ZORule,
    schedule: SubspaceSchedule,
    *,
    spent: Callable[[], Tensor],
    generator: torch.Generator,
    budget: int,
    callback: Callable[[int, int, float], None] | None,
) -> None:
    """Step one variable until the next step might overrun ``budget`` for the image that has
    spent most (``spent()``) or every image is fooled; ``obj`` keeps the best. The variable
    lives in the schedule's space for the queries spent, refined (moments carried over) at
    each switch."""
    space = schedule.spaces[0]
    v = torch.zeros(1, *space.var_shape, dtype=obj.x0.dtype, device=obj.x0.device)
    zero = torch.zeros(1, dtype=torch.long, device=obj.x0.device)
    fx = obj(v, zero).double()
    cost = rule.max_queries_per_step(space.dim) + 1
    attacked = obj.x0.shape[0]
    step = 0
    while True:
        used = int(spent().max())
        if used + cost > budget or obj.best_key[0] == attacked:
            break
        new = schedule.spaces[schedule.stage(used)] if len(schedule.spaces) > 1 else space
        if new is not space:
            # Refine: the same perturbation in the finer space, moments carried over.
            old = space
            v = new.project(new.restrict(old.expand(v)), obj.norm, obj.eps)
            rule.carry_over(_refine_map(new, old), tuple(old.var_shape))
            space = obj.subspace = new
            cost = rule.max_queries_per_step(space.dim) + 1
            fx = obj(v, zero).double()
            continue
        res = rule.step(obj, v, generator=generator, idx=zero, fx=fx)
        v_next = space.project(res.x_next, obj.norm, obj.eps)
        # A rule's own value of its next point stands only if projection left it alone.
        known = bool(torch.isfinite(res.fx_next).all()) and torch.equal(v_next, res.x_next)
        v = v_next
        fx = res.fx_next if known else obj(v, zero).double()
        step += 1
        if callback is not None:
            callback(step, used, float(fx[0]))


def _refine_map(new: Subspace, old: Subspace) -> Callable[[Tensor], Tensor]:
    """Re-express an old-space variable (moments too) in the new space."""
    return lambda t: new.restrict(old.expand(t))


class _SubLedger:
    """Routes a subset of images to the main black box under their original ids."""

    def __init__(self, blackbox: BlackBox, ids: Tensor) -> None:
        self._bb, self._ids = blackbox, ids.cpu()
        self.output = blackbox.output

    def query(self, x: Tensor, owner: Tensor) -> Tensor:
        return self._bb.query(x, self._ids[owner.cpu()])
