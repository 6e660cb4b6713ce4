"""The query-limited attack loop shared by every ZO update rule.

Counting rule: every scored input counts (the clean check, every probe, every iterate
check). An image succeeds at the first scored point that fools the model, probes included:
that point was queried, so it is a legitimate adversarial example inside the threat model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.surrogates import surrogate_loss_with_graph
from zoattack.blackbox import BlackBox
from zoattack.errors import (
    InvalidInputError,
    InvalidScoresError,
    QueryBudgetExceeded,
    ZOAttackError,
)
from zoattack.losses import attack_loss, is_adversarial
from zoattack.norms import check_norm, distance, inside, to_image
from zoattack.objective import feasible_prior
from zoattack.optim.base import ZORule
from zoattack.subspace import Subspace, SubspaceSchedule


class AttackObjective:
    """Losses of perturbation variables for N images, recording any adversarial it scores.

    Points ``(M, *var_shape)`` owned by images ``owner`` are expanded by the subspace,
    projected onto the ball, clipped to [0, 1] and scored by the black box.
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
        surrogate: torch.nn.Module | None = None,
    ) -> None:
        if blackbox.output not in ("logits", "probs"):
            raise ValueError(
                "score-based attacks need a black box returning logits or probs, "
                f"not {blackbox.output}"
            )
        self.blackbox = blackbox
        self.x0, self.label, self.target = x0, label, target
        self.norm, self.eps, self.subspace, self.loss = norm, eps, subspace, loss
        self.surrogate = surrogate
        # The transfer prior the ``prior`` estimator asks for (zoattack.objective
        # .surrogate_gradient_of); None without a surrogate model.
        self.surrogate_gradient: Callable[[Tensor, Tensor], Tensor] | None = (
            self._surrogate_gradient if surrogate is not None else None
        )
        n = x0.shape[0]
        self.found = torch.zeros(n, dtype=torch.bool, device=x0.device)
        self.x_adv = x0.clone()
        self.adv_pred = label.clone()
        self._rows_buf: Tensor | None = None  # scratch rows of x0 (see _clean_rows)
        self._rows_memo: list[tuple[Tensor, int, Tensor | bool | None]] = []
        self._ids: Tensor | None = None  # 0..N-1 (see _all_ids; run_attack passes its own)
        # While the black box defers its checks, the images each call of the step found
        # first, so a call whose check fails leaves no trace (as when checks ran at once).
        self.checkpoints: list[Tensor] | None = None
        self._recent: tuple[Tensor, Tensor, Tensor] = (
            label[:0],
            x0.new_zeros(0).double(),
            label[:0],
        )

    def images(self, v: Tensor, owner: Tensor, *, projected: bool = False) -> Tensor:
        """The queried images of variables ``v``. ``projected``: ``v`` is already in the ball
        (:meth:`feasible` / :meth:`feasible_` output, or the loop's projected iterate)."""
        delta = self.subspace.expand(v)
        return to_image(
            self._clean_rows(owner),
            delta,
            self.norm,
            self.eps,
            projected=projected and self._clamp_projects,
            consume=delta is not v,  # a tile expansion is a fresh tensor: built on in place
        )

    @property
    def _clamp_projects(self) -> bool:
        """Linf on full/tile spaces: the projection is a clamp, in variable space (the
        subspace's) and in image space (the scoring's) alike. Clamping is idempotent and
        nearest expansion copies values, so a variable that went through it scores the same
        without a second clamp, bit for bit. (The L2 / DCT rescales are not exactly
        idempotent in floating point: there scoring projects again, as before.)"""
        return self.norm == "linf" and not self.subspace.spec.startswith("dct:")

    def _clean_rows(self, owner: Tensor) -> Tensor:
        """``x0[owner]``, or just one row per image when ``owner`` is runs of equal length
        (every probe grid is: K rows per image), which :func:`to_image` broadcasts instead
        of reading and writing an image-sized copy per row."""
        m = owner.numel()
        if owner is self._ids:
            return self.x0  # every image once, in order (to_image does not modify it)
        # What the owner tensor is, remembered for the same tensor unmodified (the loop's ids
        # and the estimators' probe grids come back step after step): no read after the first.
        # (A few owners take turns: a step's probe grid, then its iterate check.)
        memos = self._rows_memo
        memo = next((e for e in memos if e[0] is owner and e[1] == owner._version), None)
        if memo is None:
            memo = (owner, owner._version, self._rows_kind(owner))
            self._rows_memo = [memo, *memos[:3]]
        kind = memo[2]
        if kind is True:
            return self.x0
        if isinstance(kind, Tensor):
            return self.x0.index_select(0, kind)
        # index_select: the same rows as x0[owner] at a fraction of the cost, into a buffer
        # kept between calls (to_image only reads it): at image sizes a fresh (M, d) tensor
        # per call costs page faults as well as the copy.
        buf = self._rows_buf
        if buf is None or len(buf) < m:
            shape = (m, *self.x0.shape[1:])
            buf = self._rows_buf = torch.empty(shape, dtype=self.x0.dtype, device=self.x0.device)
        out = buf[:m]
        return torch.index_select(self.x0, 0, owner, out=out)

    def _rows_kind(self, owner: Tensor) -> Tensor | bool | None:
        """True: ``owner`` is 0..N-1; ids: it is runs of equal length of these ids (a probe
        grid); None: anything else (gathered row by row)."""
        m = owner.numel()
        if m == self.x0.shape[0] and torch.equal(owner, self._all_ids(m)):
            return True
        if m > 1:
            ids, counts = torch.unique_consecutive(owner, return_counts=True)
            r = m // ids.numel()
            if r > 1 and ids.numel() * r == m and bool((counts == r).all()):
                return ids
        return None

    def _all_ids(self, n: int) -> Tensor:
        ids = self._ids
        if ids is None or len(ids) != n:
            ids = self._ids = torch.arange(n, device=self.x0.device)
        return ids

    def score(self, v: Tensor, owner: Tensor, *, projected: bool = False) -> tuple[Tensor, Tensor]:
        """``(losses (M,), predictions (M,))``; records the first adversarial per image.
        ``projected``: as in :meth:`images`."""
        owner = owner.to(self.x0.device)
        x = self.images(v, owner, projected=projected)
        scores = self.blackbox.query(x, owner).to(self.x0.device)
        if self.blackbox.output == "probs":
            scores = scores.clamp_min(1e-30).log()
        if owner is self._ids:  # every image once, in order: the rows are the tables
            target, label = self.target, self.label
        else:
            target = self.target.index_select(0, owner) if self.target is not None else None
            label = self.label.index_select(0, owner)
        loss = attack_loss(scores, label, kind=self.loss, target=target)
        pred = scores.argmax(dim=1)
        self._recent = (owner, loss, pred)
        adv = is_adversarial(pred, label, target)
        # The first adversarial row per image not found before, by masks (no host read).
        if owner is self._ids:  # every image once, in order: the row is the image
            new = adv.gt_(self.found)  # adv and not found, for bools
            if self.checkpoints is not None:  # the black box defers its checks: see _step
                self.checkpoints.append(new)
            self.found.logical_or_(new)
            torch.where(new.view(-1, *[1] * (x.dim() - 1)), x, self.x_adv, out=self.x_adv)
            torch.where(new, pred, self.adv_pred, out=self.adv_pred)
            return loss, pred
        m = owner.numel()
        new = adv.gt_(self.found.index_select(0, owner))
        pos = torch.where(new, torch.arange(m, device=owner.device), m)
        first = torch.full_like(self.found, m, dtype=torch.long)
        first.scatter_reduce_(0, owner, pos, reduce="amin")
        hit = first < m
        rows = first.clamp_(max=m - 1)
        if self.checkpoints is not None:
            self.checkpoints.append(hit)
        self.found.logical_or_(hit)
        shape = (-1, *[1] * (x.dim() - 1))
        torch.where(hit.view(shape), x.index_select(0, rows), self.x_adv, out=self.x_adv)
        torch.where(hit, pred.index_select(0, rows), self.adv_pred, out=self.adv_pred)
        return loss, pred

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        return self.score(points, owner)[0]

    def feasible(self, points: Tensor, owner: Tensor) -> Tensor:
        """The variables ``(M, *var_shape)`` moved into the threat ball, as :meth:`images`
        moves them before scoring (the [0, 1] pixel clip, which needs the image, is left to
        scoring). Estimators that interpolate displacements (LIZO) probe these points."""
        return self.subspace.project(points, self.norm, self.eps)

    def feasible_(self, points: Tensor, owner: Tensor) -> Tensor:
        """:meth:`feasible` in place on ``points`` (returned); the same values bit for bit."""
        if self._clamp_projects:
            return points.clamp_(-self.eps, self.eps)
        return points.copy_(self.feasible(points, owner))

    def score_feasible(self, points: Tensor, owner: Tensor) -> Tensor:
        """Losses of points :meth:`feasible` (or :meth:`feasible_`) returned: the same values
        as calling the objective on them, without projecting them a second time."""
        return self.score(points, owner, projected=True)[0]

    def _surrogate_gradient(self, v: Tensor, owner: Tensor) -> Tensor:
        """Gradient of the same attack loss on the surrogate's scores, with respect to the
        variables ``v`` ``(M, *var_shape)`` (through the subspace, projection and clip).
        White-box and local: the black box, and so the victim's ledger, never sees it."""
        assert self.surrogate is not None
        owner = owner.to(self.x0.device)
        with torch.enable_grad():
            var = v.detach().clone().requires_grad_(True)
            x = to_image(
                self.x0.index_select(0, owner), self.subspace.expand(var), self.norm, self.eps
            )
            target = self.target.index_select(0, owner) if self.target is not None else None
            # An ensemble averages its members' losses: the prior is their mean gradient.
            loss = surrogate_loss_with_graph(
                self.surrogate,
                x,
                self.label.index_select(0, owner),
                kind=self.loss,
                target=target,
            )
            (grad,) = torch.autograd.grad(loss.sum(), var)
        return feasible_prior(
            grad.detach(),
            v,
            self.subspace.expand(v.detach()),
            self.norm,
            self.eps,
            coordinatewise=not self.subspace.spec.startswith("dct:"),
        )

    def recent_pred(self, ids: Tensor, loss: Tensor, fallback: Tensor) -> Tensor:
        """Prediction at the point of the latest call whose loss equals ``loss`` (per image
        in ``ids``); ``fallback`` where no such row exists (the point was scored earlier)."""
        owner, losses, preds = self._recent
        if owner is ids:
            # The latest call scored exactly these images, once each, in this order (ids are
            # distinct): the match below is diagonal, so compare row by row. (Equal values
            # in another tensor take the general form, with the same result and no read.)
            return torch.where(losses == loss, preds, fallback)
        match = (owner.unsqueeze(0) == ids.unsqueeze(1)) & (
            losses.unsqueeze(0) == loss.unsqueeze(1)
        )
        hit = match.any(dim=1)
        return torch.where(hit, preds[match.int().argmax(dim=1)], fallback)


@dataclass
class AttackResult:
    """Per-image outcome (N images). ``queries`` follow the black box's counting rule."""

    x_adv: Tensor
    label: Tensor
    clean_pred: Tensor
    final_pred: Tensor
    success: Tensor
    queries: Tensor
    stop_reason: list[str]
    linf: Tensor
    l2: Tensor
    clean_correct: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    # Targets of a targeted attack (None: untargeted).
    target: Tensor | None = None
    # Set by `zoattack.attack` (zoattack/jobs/api.py); empty from this loop alone: the
    # images' positions, the hard-label distance in the attack's norm (inf where nothing was
    # found) and queries when it first fell to eps, what ran in words, the counting rule
    # and the resolved settings.
    index: Tensor | None = None
    distance: Tensor | None = None
    queries_to_eps: Tensor | None = None
    method: str = ""
    counting_rule: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the adversarial examples to ``path`` (safetensors; read them back with
        :func:`zoattack.load_adversarial`, check them with `zoattack verify`)."""
        from zoattack.adversarial import example_tensors, write_examples

        index = self.index if self.index is not None else torch.arange(len(self.label))
        meta = {
            "method": self.method or None,
            "counting_rule": self.counting_rule or None,
            **{k: self.settings.get(k) for k in ("model", "dataset", "norm", "eps", "budget")},
        }
        return write_examples(path, example_tensors(self, index), meta)


@dataclass(frozen=True)
class LoopProgress:
    """What the loop hands its ``callback`` mid-attack (for progress displays): per image
    ``(N,)``, whether it is finished, whether it fooled the model and whether it was
    attacked at all (initially correct)."""

    finished: Tensor
    fooled: Tensor
    attacked: Tensor


@dataclass
class PartialResult:
    """The state of an attack that stopped early: ``finished`` marks images whose outcome
    was final (success, budget, misclassified) when it stopped."""

    result: AttackResult
    finished: Tensor


class AttackInterrupted(ZOAttackError):
    """The model failed (or the user interrupted) mid-attack; ``partial`` holds what was
    finished (None when the clean check itself did not complete). The cause is chained."""

    def __init__(self, message: str, partial: PartialResult | None) -> None:
        super().__init__(message)
        self.partial = partial


def resolve_target(
    target: Tensor | str | int | None,
    clean_scores: Tensor,
    label: Tensor,
    generator: torch.Generator,
) -> Tensor | None:
    """``None`` (untargeted), a tensor, a class index, ``"random"`` (uniform over the other
    classes, from ``generator``) or ``"least-likely"`` (lowest clean score)."""
    if target is None or isinstance(target, Tensor):
        return target
    n, classes = clean_scores.shape
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        t = int(target)
        if not 0 <= t < classes:
            raise ValueError(f"target class must be in [0, {classes - 1}], got {t}")
        return torch.full_like(label, t)
    if target == "random":
        shift = torch.randint(1, classes, (n,), generator=generator, device=generator.device)
        return (label + shift.to(label.device)) % classes
    if target in ("least-likely", "least_likely"):
        return clean_scores.argmin(dim=1)
    raise ValueError(f"target must be random, least-likely or a class index, got {target!r}")


@dataclass(frozen=True, eq=False)
class _Run:
    """What stays fixed for one call of :func:`run_attack` (N images)."""

    blackbox: BlackBox
    rule: ZORule
    obj: AttackObjective
    schedule: SubspaceSchedule
    generator: torch.Generator
    norm: str
    eps: float
    budget: int
    max_steps: int | None
    callback: Callable[[int, LoopProgress | None, Tensor], None] | None
    x0: Tensor  # (N, C, H, W)
    label: Tensor  # (N,)
    idx: Tensor  # (N,) ids 0..N-1 on the images' device
    idx_cpu: Tensor  # the same ids on the CPU, where the ledger lives
    start_q: Tensor  # (N,) the ledger before the attack: queries are counted from here
    clean_pred: Tensor  # (N,)
    clean_correct: Tensor  # (N,) bool: attacked at all
    # Search rules return the loss of their next point, so they need no iterate check.
    check: int

    def spent(self) -> Tensor:
        """Queries each image has spent in this attack so far ``(N,)`` (CPU)."""
        return self.blackbox.queries_of(self.idx_cpu) - self.start_q

    def step_cost(self, space: Subspace) -> int:
        """Worst-case queries of one step per image: the rule's probes plus the iterate check."""
        return self.rule.max_queries_per_step(space.dim) + self.check


@dataclass(eq=False)
class _LoopState:
    """What the step loop changes. It is updated in place, so a caller still sees the state
    reached when a model call fails part-way."""

    v: Tensor  # (N, *var_shape) perturbation variables in the current subspace
    fx: Tensor  # (N,) float64 loss at v; NaN where v moved and must be re-scored
    active: Tensor  # (N,) bool: still attacking
    last_pred: Tensor  # (N,) prediction at the latest scored iterate
    reasons: list[str]  # per image: "" while running, then the stop reason
    space: Subspace  # the subspace v lives in
    step: int = 0
    # (active tensor, its version, active ids, any active): what _active_ids and
    # _any_active last read; valid while ``active`` is that tensor, unmodified.
    _seen: tuple[Tensor, int, Tensor | None, bool] | None = field(default=None, repr=False)

    def stop(self, images: Tensor, reason: str) -> None:
        for i in images.nonzero().flatten().tolist():
            self.reasons[i] = reason


def run_attack(
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
    target: Tensor | str | int | None = None,
    subspace: str = "full",
    max_steps: int | None = None,
    callback: Callable[[int, LoopProgress | None, Tensor], None] | None = None,
    surrogate: torch.nn.Module | None = None,
) -> AttackResult:
    """Attack images ``x0`` ``(N, C, H, W)`` in [0, 1] with labels ``(N,)`` as one batch.

    Each image may spend ``budget`` queries (checked before each step against the rule's
    worst-case cost plus the iterate check). Images the model misclassifies at the start are
    skipped (``stop_reason="misclassified"``; for targeted attacks also images already of
    the target class); finished images spend nothing more. ``surrogate``: a local white-box
    model whose gradient the ``prior`` estimator uses (never queried through the black box).
    """
    norm = check_norm(norm, eps)
    if budget < 2:
        raise ValueError(f"budget must be >= 2 queries per image, got {budget}")
    if x0.dim() != 4:
        raise ValueError(f"images must be shaped (N, C, H, W), got {tuple(x0.shape)}")
    if float(x0.min()) < 0 or float(x0.max()) > 1:
        raise ValueError("images must lie in [0, 1]; normalisation belongs inside the model")
    n = x0.shape[0]
    dev = x0.device
    schedule = SubspaceSchedule(subspace, tuple(x0.shape[1:]), budget)
    space = schedule.spaces[0]
    obj = AttackObjective(
        blackbox,
        x0,
        label,
        norm=norm,
        eps=eps,
        subspace=space,
        loss=loss,
        target=None,
        surrogate=surrogate,
    )
    idx = torch.arange(n, device=dev)
    obj._ids = idx  # the same tensor the loop hands out when every image is active
    idx_cpu = idx.cpu()
    start_q = blackbox.queries_of(idx_cpu).clone()
    clean_pred, fx = _clean_check(blackbox, obj, x0, label, idx, target, generator, loss)
    clean_correct = clean_pred == label
    if obj.target is not None:
        clean_correct &= obj.target != label
    run = _Run(
        blackbox=blackbox,
        rule=rule,
        obj=obj,
        schedule=schedule,
        generator=generator,
        norm=norm,
        eps=eps,
        budget=budget,
        max_steps=max_steps,
        callback=callback,
        x0=x0,
        label=label,
        idx=idx,
        idx_cpu=idx_cpu,
        start_q=start_q,
        clean_pred=clean_pred,
        clean_correct=clean_correct,
        check=0 if rule.estimator is None else 1,
    )
    v0 = start_point(rule, space, n, norm, eps, generator, x0.dtype, dev)
    if v0 is not None:  # away from the clean image: its loss is unknown until scored
        fx = torch.full_like(fx, float("nan"))
    state = _LoopState(
        v=v0 if v0 is not None else torch.zeros(n, *space.var_shape, device=dev, dtype=x0.dtype),
        fx=fx,
        active=clean_correct.clone(),
        last_pred=clean_pred.clone(),
        reasons=["misclassified" if not bool(c) else "" for c in clean_correct.tolist()],
        space=space,
    )
    try:
        _loop(run, state)
    except QueryBudgetExceeded:
        raise
    except (ZOAttackError, KeyboardInterrupt) as exc:
        # A probe that fooled the model before the failure is a success like any other;
        # images still running when the model failed are the only unfinished ones.
        state.stop(obj.found & clean_correct, "success")
        finished = torch.tensor([r != "" for r in state.reasons], dtype=torch.bool)
        raise AttackInterrupted(
            str(exc) or type(exc).__name__, PartialResult(_result(run, state), finished)
        ) from exc
    return _result(run, state)


def _clean_check(
    blackbox: BlackBox,
    obj: AttackObjective,
    x0: Tensor,
    label: Tensor,
    idx: Tensor,
    target: Tensor | str | int | None,
    generator: torch.Generator,
    loss: str,
) -> tuple[Tensor, Tensor]:
    """Score the clean images (1 query each), resolve data-dependent targets into
    ``obj.target`` and return ``(clean predictions (N,), clean losses (N,))``."""
    try:
        clean_scores = blackbox.query(x0, idx).to(x0.device)
    except QueryBudgetExceeded:
        raise
    except (ZOAttackError, KeyboardInterrupt) as exc:
        raise AttackInterrupted(f"the clean check failed: {exc}", None) from exc
    if blackbox.output == "probs":
        clean_scores = clean_scores.clamp_min(1e-30).log()
    obj.target = resolve_target(target, clean_scores, label, generator)
    fx = attack_loss(clean_scores, label, kind=loss, target=obj.target)
    return clean_scores.argmax(dim=1), fx


def _loop(run: _Run, state: _LoopState) -> None:
    """Step every active image until it succeeds, runs out of budget or of steps.

    Host reads: one per model call in the steady state. The black box's checks are read
    with the step's own flags (:meth:`BlackBox.deferred_checks`); the budget and the
    subspace stage are decided from the ledger's known maximum on the host, and read
    exactly only when that bound cannot decide them (the last steps before a limit)."""
    cost = run.step_cost(state.space)
    bb, dev = run.blackbox, state.v.device
    start_min = int(run.start_q.min()) if run.start_q.numel() else 0
    schedule = run.schedule
    stage_seen: tuple[Tensor, int] | None = None  # active (and version) at the last exact stage
    with bb.deferred_checks():
        while _any_active(state):
            # No image has spent more than this (None: unknown).
            hi = bb.count_bound
            most = None if hi is None else hi - start_min
            spent: Tensor | None = None
            retired = False
            if most is None or most > run.budget - cost:
                spent = run.spent().to(dev)
                retired = _retire_over_budget(run, state, spent, cost)
            if run.max_steps is not None and state.step >= run.max_steps:
                state.stop(state.active, "steps")
                break
            if retired and not _any_active(state):
                break
            if run.rule.reads_progress:  # budget-relative schedules; else a wasted op per step
                spent = run.spent().to(dev) if spent is None else spent
                run.rule.set_progress(spent / run.budget)
            stage = 0
            if len(schedule.spaces) > 1:
                stage = next(i for i, sp in enumerate(schedule.spaces) if sp is state.space)
                # While the active set is unchanged the largest spent count among active
                # images only grows: the stage is the current one while the bound's is.
                same = (
                    stage_seen is not None
                    and stage_seen[0] is state.active
                    and stage_seen[1] == state.active._version
                )
                if not (same and most is not None and schedule.stage(most) == stage):
                    spent = run.spent().to(dev) if spent is None else spent
                    stage = schedule.stage(int(spent[state.active].max()))
                    stage_seen = (state.active, state.active._version)
            if schedule.spaces[stage] is not state.space:
                _refine(run, state, schedule.spaces[stage])
                cost = run.step_cost(state.space)
                continue
            _step(run, state, start_min)
            state.step += 1
            if run.callback is not None:
                live = LoopProgress(
                    finished=~state.active,
                    fooled=run.obj.found & run.clean_correct,
                    attacked=run.clean_correct,
                )
                run.callback(state.step, live, run.spent())


def start_point(
    rule: ZORule,
    space: Subspace,
    n: int,
    norm: str,
    eps: float,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """The first iterate ``(n, *var_shape)`` a gradient rule asked for (``rule.start``), or
    None for the clean image. ``stripes``: Square's initialisation (Andriushchenko et al.,
    ECCV 2020): one random sign per column of each channel of the variable, over its full
    height; ``vertex``: i.i.d. signs. At the Linf radius (a vertex of the ball), scaled onto
    the sphere for L2. Drawn in the variable's space (for tiles: columns of tiles)."""
    start = getattr(rule, "start", "zero")
    if start == "zero" or rule.estimator is None:
        return None
    shape = tuple(space.var_shape)
    draw = (shape[0], 1, shape[2]) if start == "stripes" and len(shape) == 3 else shape
    bits = torch.randint(0, 2, (n, *draw), generator=generator, device=generator.device)
    signs = (bits * 2 - 1).to(device=device, dtype=dtype).expand(n, *shape).contiguous()
    # Every expansion of +-eps coordinates has L2 norm >= eps: the projection lands on the
    # sphere for l2 and leaves the vertex alone for Linf.
    return space.project(signs * eps, norm, eps)


def _retire_over_budget(run: _Run, state: _LoopState, spent: Tensor, cost: int) -> bool:
    """Stop images that could not pay for one more worst-case step; True if any stopped."""
    broke = spent.gt(run.budget - cost)
    broke &= state.active
    if bool(broke.any()):
        state.stop(broke, "budget")
        state.active &= ~broke
        return True
    return False


def _memo(state: _LoopState) -> tuple[Tensor, int, Tensor | None, bool] | None:
    """``state._seen`` while ``active`` is still the tensor it was read from, unmodified."""
    seen = state._seen
    if seen is not None and seen[0] is state.active and seen[1] == state.active._version:
        return seen
    return None


def _any_active(state: _LoopState) -> bool:
    """``bool(state.active.any())``, read again only after ``active`` changed (a step that
    finishes no image leaves it alone, so the usual step needs no reduction and sync)."""
    seen = _memo(state)
    if seen is not None:
        return seen[3]
    anyone = bool(state.active.any())
    state._seen = (state.active, state.active._version, None, anyone)
    return anyone


def _active_ids(run: _Run, state: _LoopState) -> Tensor:
    """Ids of the active images, recomputed only after ``active`` changed. When every image
    is active this is ``run.idx`` itself: the same tensor step after step, which the
    per-example state, the ledger and the objective recognise without comparing values."""
    seen = _memo(state)
    if seen is not None and seen[2] is not None:
        return seen[2]
    ids = state.active.nonzero().flatten()
    if ids.numel() == run.idx.shape[0]:
        ids = run.idx
    state._seen = (state.active, state.active._version, ids, bool(ids.numel()))
    return ids


def _refine(run: _Run, state: _LoopState, new: Subspace) -> None:
    """Move to the next, larger subspace of the schedule.

    Re-express every current perturbation and the rule's moments in the new subspace (long
    momentum is what makes these rules work; a restart from zero cost it at every switch),
    and mark iterates that moved for re-scoring.
    """
    old, v = state.space, state.v
    v_new = new.project(new.restrict(old.expand(v)), run.norm, run.eps)
    changed = (new.expand(v_new) != old.expand(v)).flatten(1).any(dim=1)
    state.fx[changed] = float("nan")
    run.rule.carry_over(lambda t: new.restrict(old.expand(t)), tuple(old.var_shape))
    state.space, state.v = new, v_new
    run.obj.subspace = new


def _step(run: _Run, state: _LoopState, start_min: int) -> None:
    """One rule step for every active image, then the iterate check where it is needed."""
    obj = run.obj
    obj.checkpoints = [] if run.blackbox.deferring else None
    try:
        _step_body(run, state, start_min)
    except (InvalidInputError, InvalidScoresError) as exc:
        # A deferred check failed: ``found`` as it was before the failing call.
        i = getattr(exc, "failed_call", None)
        if obj.checkpoints and i is not None:
            for new in obj.checkpoints[i:]:
                obj.found &= ~new
        raise
    finally:
        obj.checkpoints = None


def _step_body(run: _Run, state: _LoopState, start_min: int) -> None:
    obj, v, fx, last_pred, bb = run.obj, state.v, state.fx, state.last_pred, run.blackbox
    ids = _active_ids(run, state)
    # Every image active (ids = 0..N-1; the usual step): the rule reads v itself (rules never
    # write their input), sparing an image-sized gather; a search rule reads fx itself too.
    # Otherwise index_select/index_copy_ (ids are distinct), a fraction of advanced
    # indexing's cost.
    whole = ids.numel() == v.shape[0]
    x_in = v if whole else v.index_select(0, ids)
    fx_in = fx if whole and run.check == 0 else fx.index_select(0, ids)
    res = run.rule.step(obj, x_in, generator=run.generator, idx=ids, fx=fx_in)
    # Every image active: none had been found before this step, so found is done.
    done = obj.found if whole else obj.found.index_select(0, ids)
    # Rules that scored their own next point (greedy search, line search) hand back its
    # loss; projection must have left that point alone for the value to stand.
    # finite > done is "finite and not done" for bools; |f| < inf is isfinite (NaN compares
    # False), each in fewer ops than the spelled-out form.
    known = res.fx_next.abs().lt(math.inf).gt_(done)
    # Keep the variable inside the ball (in variable space; expansion preserves Linf). A
    # clamp is written straight into v; no host read decides whether it is needed.
    x_next = res.x_next
    if run.norm == "linf" and not state.space.spec.startswith("dct:"):
        if whole:
            v_next = torch.clamp(x_next.to(v.dtype), -run.eps, run.eps, out=v)
        else:
            v_next = x_next.clamp(-run.eps, run.eps)
            v.index_copy_(0, ids, v_next.to(v.dtype))
        moved = True
    else:
        v_next = state.space.project(x_next, run.norm, run.eps)
        moved = v_next is not x_next
        if v_next is not v:
            if whole:
                v.copy_(v_next)
            else:
                v.index_copy_(0, ids, v_next.to(v.dtype))
    if moved:
        known &= (v_next == x_next).flatten(1).all(dim=1)
    # Next losses where known, the old ones elsewhere (an iterate check fills those in).
    fx_sel = torch.where(known, res.fx_next, fx_in)
    pred_old = last_pred if whole else last_pred.index_select(0, ids)
    pred_sel = torch.where(known, obj.recent_pred(ids, res.fx_next, pred_old), pred_old)
    if whole:
        fx.copy_(fx_sel)
        last_pred.copy_(pred_sel)
    else:
        fx.index_copy_(0, ids, fx_sel)
        last_pred.index_copy_(0, ids, pred_sel)
    # The step's one host read, with the black box's checks of its calls.
    settled = known.logical_or_(done)
    any_settled, all_settled, any_done = bb.settle(
        torch.stack([settled.any(), settled.all(), done.any()])
    )
    if not all_settled:
        # The iterate check, 1 query per image not done whose next loss is unknown.
        live = ids if not any_settled else ids[~settled]
        hi = bb.count_bound
        if hi is None or hi - start_min >= run.budget:
            # An iterate check the budget cannot pay for is skipped: the image stops next
            # round.
            live_cpu = live.cpu() if live.device.type != "cpu" else live
            used = bb.queries_of(live_cpu) - run.start_q[live_cpu]
            live = live[(used < run.budget).to(live.device)]
        if live.numel():
            # v was projected above (it always is: the start point and every refinement
            # are too), so scoring need not project it again; every image live: v itself,
            # no gathered copy.
            v_live = v if live.numel() == v.shape[0] else v.index_select(0, live)
            f_new, p_new = obj.score(v_live, live, projected=True)
            fx[live] = f_new.double()
            last_pred[live] = p_new
            done = obj.found if whole else obj.found.index_select(0, ids)
            (any_done,) = bb.settle(done.any())
    if any_done:
        for i in ids[done].tolist():
            state.reasons[i] = "success"
        # Only images of this step can have been found (ids are the active ones), so active
        # changes only here.
        state.active &= ~obj.found


def _result(run: _Run, state: _LoopState) -> AttackResult:
    """The per-image outcome; checks that every image stayed in the threat model and budget."""
    obj, x0 = run.obj, run.x0
    final_x = torch.where(obj.found.view(-1, 1, 1, 1), obj.x_adv, obj.images(state.v, run.idx))
    final_pred = torch.where(obj.found, obj.adv_pred, state.last_pred)
    ok = inside(final_x, x0, run.norm, run.eps)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        raise AssertionError(f"internal error: images {bad[:5]} left the threat model")
    queries = run.spent()
    if run.budget is not None and bool((queries > run.budget).any()):
        raise AssertionError("internal error: an image exceeded its query budget")
    return AttackResult(
        x_adv=final_x,
        label=run.label,
        clean_pred=run.clean_pred,
        final_pred=final_pred,
        success=obj.found & run.clean_correct,
        queries=queries,
        stop_reason=state.reasons,
        linf=distance(final_x, x0, "linf"),
        l2=distance(final_x, x0, "l2"),
        clean_correct=run.clean_correct,
        target=obj.target,
    )
