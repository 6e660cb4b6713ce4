"""Batched zeroth-order update rules.

A rule pairs a gradient estimator with an update; both work on N independent problems at
once and keep per-example state (indexed by global example id) created lazily.
``step(objective, x, generator=...)`` returns a :class:`StepResult`; the caller owns
projection and stopping. Each rule file also exposes a pure update kernel.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from zoattack._state import PerExampleState
from zoattack.estimators import create_estimator
from zoattack.estimators.base import GradientEstimator
from zoattack.objective import Objective

LR_DECAYS = ("constant", "sqrt", "halving")
SEARCH_NORMS = ("linf", "l2")
# Where a gradient rule's first iterate sits (read by the attack loop, zoattack/attacks/base.py):
# the clean image, or one scored vertex of the Linf ball (Square's vertical stripes, or i.i.d.
# signs), the surface of the L2 ball for l2.
STARTS = ("zero", "stripes", "vertex")
# Rule state a restart keeps: its own bookkeeping (the restart's best point and stall counter).
_RESTART_KEEP = ("best_f", "best_x", "stall")


def apgd_checkpoints(limit: float = 1.0) -> list[float]:
    """APGD's checkpoints as fractions of the budget (Croce & Hein, ICML 2020): the first at
    0.22, each gap 0.03 shorter than the one before, never under 0.06; those below ``limit``."""
    points, prev, cur = [], 0.0, 0.22
    while cur < limit:
        points.append(cur)
        prev, cur = cur, cur + max(cur - prev - 0.03, 0.06)
    return points


_CHECKPOINTS = torch.tensor(apgd_checkpoints(), dtype=torch.float64)


@dataclass
class StepResult:
    """One step for N examples.

    Attributes:
        x_next: proposed next points ``(N, *shape)`` (not projected).
        loss: ``f(x)`` at the points the step started from ``(N,)``, or None if not scored.
        queries: queries spent per example in this step ``(N,)``.
        grad: the gradient estimate used ``(N, *shape)``.
        fx_next: ``f(x_next)`` where the step already knows it (line search), NaN elsewhere.
    """

    x_next: Tensor
    loss: Tensor | None
    queries: Tensor
    grad: Tensor
    fx_next: Tensor


class _SearchStepResult(StepResult):
    """A search rule's step: ``grad`` (what the rule reports as its gradient view, which the
    attack loop never reads) is computed from ``x_next`` on first access, sparing an
    image-sized pass and allocation per step. ``x_next`` must not be modified before.
    ``queries`` (always one per example) is likewise built on first access."""

    def __init__(
        self,
        *,
        x_next: Tensor,
        loss: Tensor | None,
        grad_of: Callable[[Tensor], Tensor],
        fx_next: Tensor,
    ) -> None:
        self._grad_of: Callable[[Tensor], Tensor] | None = grad_of
        self._grad: Tensor | None = None
        self._queries: Tensor | None = None
        super().__init__(x_next=x_next, loss=loss, queries=None, grad=None, fx_next=fx_next)  # type: ignore[arg-type]

    @property
    def queries(self) -> Tensor:
        """One query per example (built on first access: the attack loop never reads it)."""
        if self._queries is None:
            n = self.x_next.shape[0]
            self._queries = torch.ones(n, dtype=torch.int64, device=self.x_next.device)
        return self._queries

    @queries.setter
    def queries(self, value: Tensor | None) -> None:
        self._queries = value

    @property
    def grad(self) -> Tensor:
        if self._grad is None and self._grad_of is not None:
            self._grad, self._grad_of = self._grad_of(self.x_next), None
        assert self._grad is not None
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        self._grad = value
        if value is not None:
            self._grad_of = None


def check_lr(lr: float | Tensor) -> float | Tensor:
    if isinstance(lr, Tensor):
        if not bool(torch.isfinite(lr).all()) or bool((lr <= 0).any()):
            raise ValueError("lr must be finite and > 0 everywhere")
        return lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    return float(lr)


def check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
    return float(betas[0]), float(betas[1])


def check_start(start: str) -> str:
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    return start


def check_restart(restart: int) -> int:
    if isinstance(restart, bool) or not isinstance(restart, int) or restart < 0:
        raise ValueError(
            f"restart (steps without improvement before a restart) must be an integer >= 0 "
            f"(0: off), got {restart!r}"
        )
    return restart


def check_mu_decay(mu_decay: float) -> float:
    if not (isinstance(mu_decay, (int, float)) and math.isfinite(mu_decay) and 0 < mu_decay <= 1):
        raise ValueError(
            f"mu_decay (the smoothing radius's final fraction) must be in (0, 1], got {mu_decay}"
        )
    return float(mu_decay)


def halving_factor(progress: Tensor) -> Tensor:
    """``0.5**j``, ``j`` the APGD checkpoints each budget fraction in ``progress`` has passed."""
    passed = (progress.unsqueeze(-1) >= _CHECKPOINTS.to(progress.device)).sum(-1)
    return torch.pow(0.5, passed.to(torch.float64))


def check_eps(eps: float) -> float:
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return float(eps)


class ZORule(abc.ABC):
    """Base class of update rules.

    Args:
        lr: step size (a float, or a tensor broadcastable to one example's shape, which the
            torch.optim face uses for per-group learning rates).
        estimator: a registered estimator name or an instance; default: the paper's pairing.
        num_samples, mu, difference: forwarded to the estimator when it is built by name
            (None keeps the estimator's default).
        estimator_kwargs: further estimator options.
        lr_decay: ``"constant"``, ``"sqrt"`` (``lr/sqrt(t)``, as in ZO-AdaMM's code) or
            ``"halving"`` (``lr * 0.5**j`` after the ``j``-th of APGD's budget-relative
            checkpoints 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of each example's
            budget; :func:`apgd_checkpoints`).
        start: where an attack's first iterate sits (:data:`STARTS`): ``"zero"`` (the clean
            image), ``"stripes"`` (Square's init: one random sign per column of each channel,
            over the full height, at the radius) or ``"vertex"`` (i.i.d. signs). Read by
            the attack loop; that point is scored as the first query, like Square's.
        restart: patience ``K`` (0: off). An example whose best loss (over the points the rule
            stepped from) has not improved for ``K`` steps restarts: its rule and estimator
            state (momentum, Adam moments, LIZO buffers, step counter) is reset and its next
            iterate is its best point. Per example; the others are untouched.
        mu_decay: ``r`` in ``mu_t = mu * r**p``, ``p`` the fraction of the budget spent by the
            most advanced active example (the convention of the subspace schedule): the
            smoothing radius decays geometrically from ``mu`` to ``mu * r``. 1: constant.

    Budget-relative schedules (``lr_decay="halving"``, ``mu_decay``) read the fraction of the
    budget each example has spent, which the attack loop reports through
    :meth:`set_progress`; a rule never told (e.g. `zoattack optimize`) stays at ``p = 0``.
    """

    name: ClassVar[str] = ""
    default_estimator: ClassVar[str] = "gaussian"
    estimator: GradientEstimator | None  # None only for SearchRule subclasses
    mu_decay: float = 1.0  # search rules have no radius to decay

    def __init__(
        self,
        *,
        lr: float | Tensor,
        estimator: str | GradientEstimator | None = None,
        num_samples: int | None = None,
        mu: float | None = None,
        difference: str | None = None,
        estimator_kwargs: dict[str, Any] | None = None,
        lr_decay: str = "constant",
        start: str = "zero",
        restart: int = 0,
        mu_decay: float = 1.0,
    ) -> None:
        self.lr = check_lr(lr)
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {lr_decay!r}")
        self.lr_decay = lr_decay
        self.start = check_start(start)
        self.restart = check_restart(restart)
        self.mu_decay = check_mu_decay(mu_decay)
        self.progress: Tensor | None = None
        if isinstance(estimator, GradientEstimator):
            if num_samples is not None or mu is not None or estimator_kwargs:
                raise ValueError("pass num_samples/mu/estimator_kwargs only with an estimator name")
            self.estimator = estimator
        else:
            name = estimator or self.default_estimator
            given = {"num_samples": num_samples, "mu": mu, "difference": difference}
            kwargs = {
                **self._estimator_defaults(name),
                **{k: v for k, v in given.items() if v is not None},
                **(estimator_kwargs or {}),
            }
            self.estimator = create_estimator(name, **kwargs)
        self.state = PerExampleState()
        self._mu0 = float(self.estimator.mu)

    @property
    def reads_progress(self) -> bool:
        """Whether a budget-relative schedule (lr halving, mu decay) reads :meth:`set_progress`."""
        return self.lr_decay == "halving" or self.mu_decay != 1.0

    def set_progress(self, progress: Tensor | None) -> None:
        """The fraction of the budget each example (global id) has spent, ``(N_total,)``;
        what the budget-relative schedules read. The attack loop calls it before each step."""
        self.progress = progress

    def _progress(self, idx: Tensor) -> Tensor:
        """Per-example budget fraction of ``idx`` (zeros when no driver reported one)."""
        if self.progress is None:
            return torch.zeros(idx.shape, dtype=torch.float64, device=idx.device)
        return self.progress.to(idx.device, torch.float64).index_select(0, idx)

    def _estimator_defaults(self, name: str) -> dict[str, Any]:
        """Rule-specific estimator options (e.g. LIZO's reuse radius tied to lr)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr!r}, estimator={self.estimator!r})"

    def max_queries_per_step(self, dim: int) -> int:
        """Upper bound on queries one step spends per example (f(x) not supplied)."""
        if self.estimator is None:  # search rules (SearchRule) override this
            return 1
        return self.estimator.queries_per_call(dim)

    def step(
        self,
        objective: Objective,
        x: Tensor,
        *,
        generator: torch.Generator,
        idx: Tensor | None = None,
        fx: Tensor | None = None,
    ) -> StepResult:
        """Estimate at ``x`` ``(N, *shape)`` and propose ``x_next``; see :class:`StepResult`."""
        n = x.shape[0]
        if idx is None:
            idx = torch.arange(n, device=x.device)
        assert self.estimator is not None  # search rules override step()
        if self.mu_decay != 1.0:
            self.estimator.mu = self._scheduled_mu(idx)
        est = self.estimator.estimate(objective, x, generator=generator, idx=idx, fx=fx)
        steps = self.state.get("step", idx, (), dtype=torch.int64, device=x.device) + 1
        self.state.set("step", idx, steps)
        lr = self._lr(steps, x, idx)
        x_next, extra, fx_next = self._update(objective, x, est.grad, est.loss, idx, steps, lr)
        if fx_next is None:
            fx_next = torch.full((n,), float("nan"), dtype=torch.float64, device=x.device)
        if self.restart:
            at = est.loss if est.loss is not None else fx
            if at is not None:
                x_next, fx_next = self._restart_stuck(x, at, x_next, fx_next, idx)
        return StepResult(
            x_next=x_next.to(x.dtype),
            loss=est.loss,
            queries=est.queries + extra,
            grad=est.grad,
            fx_next=fx_next,
        )

    def _lr(self, steps: Tensor, x: Tensor, idx: Tensor | None = None) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        if self.lr_decay == "sqrt":
            factor = steps.to(x.dtype).rsqrt()
        elif self.lr_decay == "halving" and idx is not None:
            factor = halving_factor(self._progress(idx)).to(x.dtype)
        else:
            factor = torch.ones_like(steps, dtype=x.dtype)
        lr = self.lr if not isinstance(self.lr, Tensor) else self.lr.to(x.device, x.dtype)
        return factor.view(shape) * lr

    def _scheduled_mu(self, idx: Tensor) -> float:
        """``mu0 * r**p`` at the most advanced example's budget fraction ``p`` (one radius per
        estimator call, as one subspace stage serves the whole batch)."""
        p = self._progress(idx)
        frac = float(p.max().clamp(0.0, 1.0)) if p.numel() else 0.0
        return self._mu0 * self.mu_decay**frac

    def _restart_stuck(
        self, x: Tensor, fx: Tensor, x_next: Tensor, fx_next: Tensor, idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Track each example's best point; restart those stalled for ``restart`` steps.

        ``fx`` is the loss at ``x`` (NaN: unknown, counts as no improvement). A restarted
        example's state rows (bar the best point itself) and estimator rows are reset, and
        its next iterate is its best point, whose loss is known (``fx_next``)."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        dev = x.device
        best_f = self.state.get("best_f", idx, (), dtype=torch.float64, device=dev, fill=math.inf)
        best_x = self._moment("best_x", idx, x)
        stall = self.state.get("stall", idx, (), dtype=torch.int64, device=dev)
        f = fx.to(dev, torch.float64).reshape(-1)
        better = torch.isfinite(f) & (f < best_f)
        best_f = torch.where(better, f, best_f)
        best_x = torch.where(better.view(shape), x, best_x)
        stall = torch.where(better, torch.zeros_like(stall), stall + 1)
        stuck = stall >= self.restart
        self.state.set("best_f", idx, best_f)
        self.state.set("best_x", idx, best_x)
        if bool(stuck.any()):
            stall = torch.where(stuck, torch.zeros_like(stall), stall)
            self.restart_state(idx[stuck])
            x_next = torch.where(stuck.view(shape), best_x.to(x_next.dtype), x_next)
            fx_next = torch.where(stuck, best_f, fx_next)
            self.restarts = getattr(self, "restarts", 0) + int(stuck.sum())
        self.state.set("stall", idx, stall)
        return x_next, fx_next

    def restart_state(self, ids: Tensor) -> None:
        """Forget the rule's and the estimator's memory of examples ``ids`` (global), but not
        the restart bookkeeping (best point, stall counter)."""
        for name, t in self.state.tensors.items():
            if name in _RESTART_KEEP:
                continue
            rows = ids.to(t.device)
            t[rows[rows < len(t)]] = self.state.fills[name]
        if self.estimator is not None:
            self.estimator.reset(ids)

    @abc.abstractmethod
    def _update(
        self,
        objective: Objective,
        x: Tensor,
        grad: Tensor,
        loss: Tensor | None,
        idx: Tensor,
        steps: Tensor,
        lr: Tensor,
    ) -> tuple[Tensor, Tensor | int, Tensor | None]:
        """Return ``(x_next, extra_queries, fx_next)``; state lives in ``self.state``."""

    # ------------------------------------------------------------------ state
    def reset(self, mask: Tensor | None = None) -> None:
        """Forget state for all examples, or where a bool ``mask`` (global ids) is True."""
        self.state.reset(mask)
        if self.estimator is not None:
            self.estimator.reset(mask)

    def carry_over(self, fn: Callable[[Tensor], Tensor], old_shape: tuple[int, ...]) -> None:
        """Re-express per-example memory after a change of variable (a subspace refining).

        Moments shaped like the old variable ``(M, *old_shape)`` go through ``fn`` (e.g. the
        finer tiling of the same averages), so momentum survives the switch instead of
        restarting from zero; step counters stay; estimator state (probes of the old space)
        is dropped.
        """
        for name, t in list(self.state.tensors.items()):
            if tuple(t.shape[1:]) == tuple(old_shape):
                self.state.tensors[name] = fn(t)
        if self.estimator is not None:
            self.estimator.reset()

    def state_dict(self) -> dict[str, Any]:
        est = self.estimator.state_dict() if self.estimator is not None else {}
        return {"rule": self.state.state_dict(), "estimator": est}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state["rule"])
        if self.estimator is not None:
            self.estimator.load_state_dict(state["estimator"])

    def _moment(self, name: str, idx: Tensor, x: Tensor, fill: float = 0.0) -> Tensor:
        return self.state.get(
            name, idx, tuple(x.shape[1:]), dtype=x.dtype, device=x.device, fill=fill
        )


class SearchRule(ZORule):
    """Base of estimator-free search rules (SignHunter, Square): one candidate per step.

    The variable ``x`` is a perturbation (the attack loop's ``v``): the rules search the ball
    of radius ``lr`` around the origin. Each step proposes one candidate per example, scores
    all of them in one batched objective call, and keeps the candidate only if its loss is
    strictly below the best known loss (greedy acceptance). The first step of an example
    (its ``step`` counter is 1, also after :meth:`reset`) proposes the rule's start point and
    accepts it unconditionally: from ``x = 0`` the rule's own start (a vertex, stripes,
    bumps); from a nonzero ``x`` (a reset in mid-run, e.g. at a subspace switch) a warm start
    that keeps ``x``'s signs (Linf) or direction (L2). ``fx_next`` is always the best known
    loss, so an attack loop need not re-query the iterate.

    Args:
        lr: the radius of the ball searched (the attack's eps; the CLI passes ``lr=eps``).
        norm: ``"linf"`` or ``"l2"`` (subclasses list theirs in ``supported_norms``).
        budget: queries per example, for budget-relative schedules (None: the schedule's
            own reference length).
        estimator, num_samples, mu, difference, estimator_kwargs: must stay None (accepted
            only to raise a clear error: these rules use no gradient estimator).
        lr_decay: only ``"constant"``; the radius never changes.

    Per-example state (global ids, lazily created, resettable by mask): ``step`` and ``best``
    (the best loss, float64), plus the subclass's own. ``fx`` passed to :meth:`step` is the
    loss at ``x`` when known (the attack loop always knows it); NaN or None falls back to the
    cached ``best``.
    Queries per step and example: exactly 1.
    """

    supported_norms: ClassVar[tuple[str, ...]] = SEARCH_NORMS

    def __init__(
        self,
        *,
        lr: float,
        norm: str = "linf",
        budget: int | None = None,
        estimator: str | GradientEstimator | None = None,
        num_samples: int | None = None,
        mu: float | None = None,
        difference: str | None = None,
        estimator_kwargs: dict[str, Any] | None = None,
        lr_decay: str = "constant",
    ) -> None:
        given = {
            "estimator": estimator,
            "num_samples": num_samples,
            "mu": mu,
            "difference": difference,
            "estimator_kwargs": estimator_kwargs,
        }
        for arg, value in given.items():
            if value is not None:
                raise ValueError(
                    f"the {self.name} rule uses no gradient estimator; do not pass {arg}"
                )
        if isinstance(lr, (Tensor, bool)):
            raise ValueError(f"lr (the search radius) must be a number, got {type(lr).__name__}")
        self.lr = float(check_lr(lr))
        if lr_decay != "constant":
            raise ValueError(
                f"lr_decay must be 'constant' for the {self.name} rule "
                f"(its radius is fixed), got {lr_decay!r}"
            )
        self.lr_decay = lr_decay
        key = norm.lower() if isinstance(norm, str) else norm
        if key not in self.supported_norms:
            raise ValueError(
                f"norm must be one of {', '.join(self.supported_norms)} for the "
                f"{self.name} rule, got {norm!r}"
            )
        self.norm = key
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ValueError(f"budget must be None or an integer >= 1, got {budget!r}")
        self.budget = budget
        self.estimator = None
        self.state = PerExampleState()
        self.span: tuple[int, int] | None = None
        self._span_memo: tuple[Tensor, int, Tensor, int, int, int] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr!r}, norm={self.norm!r}, budget={self.budget!r})"

    def step_span(self, steps: Tensor, idx: Tensor) -> tuple[int, int]:
        """``steps``' (min, max) for this :meth:`step` (its proposal asks): known on the host
        in the steady state, else read once and followed from then on."""
        span = self.span
        if span is None:
            lo, hi = torch.stack(torch.aminmax(steps)).tolist() if steps.numel() else (1, 1)
            span = self.span = (int(lo), int(hi))
        table = self.state.tensors["step"]
        self._span_memo = (table, table._version, idx, idx._version, *span)
        return span

    def max_queries_per_step(self, dim: int) -> int:
        return 1

    def check_shape(self, x: Tensor) -> None:
        """Raise ValueError if the rule cannot search variables shaped like ``x``."""

    def step(
        self,
        objective: Objective,
        x: Tensor,
        *,
        generator: torch.Generator,
        idx: Tensor | None = None,
        fx: Tensor | None = None,
    ) -> StepResult:
        """Propose, score (1 query per example) and greedily accept; see the class doc."""
        self.check_shape(x)
        n = x.shape[0]
        if idx is None:
            idx = torch.arange(n, device=x.device)
        if n == 0:
            empty = torch.zeros(0, dtype=torch.float64, device=x.device)
            return StepResult(
                x_next=x.clone(),
                loss=empty,
                queries=torch.zeros(0, dtype=torch.int64, device=x.device),
                grad=torch.zeros_like(x),
                fx_next=empty,
            )
        steps = self.state.get("step", idx, (), dtype=torch.int64, device=x.device) + 1
        table = self.state.tensors["step"]
        memo = self._span_memo
        # The step counts' (min, max), kept on the host: while nothing but this method wrote
        # the table and idx is the same tensor, both grew by one since the last call.
        if (
            memo is not None
            and memo[0] is table
            and memo[1] == table._version
            and memo[2] is idx
            and memo[3] == idx._version
        ):
            self.span = (memo[4] + 1, memo[5] + 1)
        else:
            self.span = None
        self.state.set("step", idx, steps)
        first = steps == 1
        shape = (-1,) + (1,) * (x.dim() - 1)
        best = self.state.get(
            "best", idx, (), dtype=torch.float64, device=x.device, fill=float("nan")
        )
        if fx is None:
            current = best  # a fresh gather: the state is only written by set() below
        else:
            known = fx.to(x.device, torch.float64)
            # |f| < inf is isfinite (NaN compares False) in two ops instead of four.
            current = torch.where(known.abs().lt(math.inf), known, best)
        cand = self._propose(objective, x, first, steps, idx, generator).to(x.dtype)
        loss = objective(cand, idx).to(x.device, torch.float64)
        if loss.shape != (n,):
            loss = loss.reshape(n)
        accept = first | (loss < current)
        # Into cand's own buffer when it is the rule's fresh proposal (it always is): an
        # image-sized allocation per step costs more than the pass itself.
        fresh = cand is not x and cand.data_ptr() != x.data_ptr()
        x_next = torch.where(accept.view(shape), cand, x, out=cand if fresh else None)
        fx_next = torch.where(accept, loss, current)
        self.state.set("best", idx, fx_next)
        self._commit(x, idx, first, accept)
        return _SearchStepResult(x_next=x_next, loss=current, grad_of=self._grad, fx_next=fx_next)

    @abc.abstractmethod
    def _propose(
        self,
        objective: Objective,
        x: Tensor,
        first: Tensor,
        steps: Tensor,
        idx: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        """Candidates ``(N, *shape)``: the start point where ``first``, else one move."""

    def _commit(self, x: Tensor, idx: Tensor, first: Tensor, accept: Tensor) -> None:
        """Advance the rule's schedule state after a step (default: nothing)."""

    def _grad(self, x_next: Tensor) -> Tensor:
        """What StepResult.grad reports; search rules estimate no gradient (zeros: a
        read-only broadcast view, nothing to fill per step)."""
        return x_next.new_zeros(()).expand_as(x_next)

    def _update(
        self,
        objective: Objective,
        x: Tensor,
        grad: Tensor,
        loss: Tensor | None,
        idx: Tensor,
        steps: Tensor,
        lr: Tensor,
    ) -> tuple[Tensor, Tensor | int, Tensor | None]:
        raise RuntimeError("search rules implement step() directly")  # pragma: no cover


def draw_signs(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Independent uniform ±1 of ``shape`` drawn from ``generator`` (never the global RNG)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (bits * 2 - 1).to(device=device, dtype=dtype)
