"""Run an update rule on N problems under a per-example query budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from zoattack.errors import PrecisionError
from zoattack.objective import Objective
from zoattack.optim.base import ZORule


@dataclass
class MinimizeResult:
    """Outcome of :func:`minimize`.

    Attributes:
        x: final points ``(N, *shape)``.
        loss: per example, the last loss the rule scored ``(N,)``: ``f`` at the point the
            final step started from (``x`` itself is not re-scored, which would cost a query).
        queries: queries spent per example ``(N,)`` (the black box's count).
        steps: steps taken per example ``(N,)``.
        history: ``(queries, loss)`` pairs per example, one per step (for loss-vs-queries curves).
        stop_reason: per example, ``"budget"``, ``"steps"``, ``"target"`` or ``"diverged"``
            (its loss rose above its start until the rule's finite differences fell below
            floating-point resolution; usually a step size too large for the problem).
    """

    x: Tensor
    loss: Tensor
    queries: Tensor
    steps: Tensor
    history: list[list[tuple[int, float]]] = field(default_factory=list)
    stop_reason: list[str] = field(default_factory=list)


def minimize(
    objective: Objective,
    x0: Tensor,
    rule: ZORule,
    *,
    generator: torch.Generator,
    budget: int,
    max_steps: int | None = None,
    target: float | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> MinimizeResult:
    """Minimise ``objective`` from ``x0`` ``(N, *shape)`` with ``rule`` until each example's
    queries would exceed ``budget`` (a step is only started if its worst-case cost fits),
    ``max_steps`` pass, or its loss reaches ``target``. An example whose iterates blow up
    (loss above its first value when the rule's probes drop below float resolution) stops
    with ``"diverged"`` and keeps what it spent; the rest of the batch goes on.

    Examples that stop drop out of the batch and spend nothing more.
    ``callback(step, queries, loss)`` is called after every step (for progress bars).
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    n = x0.shape[0]
    dim = x0[0].numel()
    x = x0.clone()
    idx_all = torch.arange(n, device=x.device)
    ledger = objective.blackbox
    start_q = ledger.queries_of(idx_all.cpu()).clone()
    fx = torch.full((n,), float("nan"), dtype=torch.float64, device=x.device)
    last = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
    first = torch.full((n,), float("nan"), dtype=torch.float64, device=x.device)
    scale0 = x.flatten(1).abs().amax(dim=1).double()
    steps = torch.zeros(n, dtype=torch.int64)
    active = torch.ones(n, dtype=torch.bool)
    reasons = [""] * n
    history: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    cost = rule.max_queries_per_step(dim)
    t = 0
    while bool(active.any()):
        spent = ledger.queries_of(idx_all.cpu()) - start_q
        out_of_budget = active & (spent + cost > budget)
        for i in out_of_budget.nonzero().flatten().tolist():
            reasons[i] = "budget"
        active &= ~out_of_budget
        if max_steps is not None and t >= max_steps:
            for i in active.nonzero().flatten().tolist():
                reasons[i] = "steps"
            break
        if not bool(active.any()):
            break
        ids = active.nonzero().flatten().to(x.device)
        try:
            res = rule.step(objective, x[ids], generator=generator, idx=ids, fx=fx[ids])
        except PrecisionError:
            # The batch shares one float scale: drop the examples that blew up and retry the
            # rest. Nothing is spent by the refused step (the check runs before scoring).
            # Blown up = loss seen rising, or (after a single step, before a second loss is
            # known) the point 100x further out than any scale the start had.
            scale = x.flatten(1).abs().amax(dim=1).double()
            far = scale > 100.0 * scale0.clamp(min=1.0)
            grown = ((last > first) | far).cpu() & active & (steps > 0)
            if not bool(grown.any()):
                raise
            for i in grown.nonzero().flatten().tolist():
                reasons[i] = "diverged"
            active &= ~grown
            continue
        x_next = project(res.x_next) if project is not None else res.x_next
        moved = (x_next != res.x_next).flatten(1).any(dim=1)
        x[ids] = x_next
        if res.loss is not None:
            last[ids] = res.loss.double()
            first[ids] = torch.where(first[ids].isnan(), last[ids], first[ids])
        # A known f(x_next) is only valid if projection left the point unchanged.
        fx[ids] = torch.where(moved, torch.full_like(res.fx_next, float("nan")), res.fx_next)
        steps[ids.cpu()] += 1
        t += 1
        spent = ledger.queries_of(idx_all.cpu()) - start_q
        for j, i in enumerate(ids.tolist()):
            if res.loss is not None:
                history[i].append((int(spent[i]), float(res.loss[j])))
        if target is not None and res.loss is not None:
            hit = (res.loss <= target).cpu()
            for i in ids.cpu()[hit].tolist():
                reasons[i] = "target"
                active[i] = False
        if callback is not None:
            callback(t, spent, last)
    spent = ledger.queries_of(idx_all.cpu()) - start_q
    return MinimizeResult(
        x=x, loss=last, queries=spent, steps=steps, history=history, stop_reason=reasons
    )
