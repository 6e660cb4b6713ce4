"""Square Attack's random search (Linf and L2) as a batched, one-query-per-step rule."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from zoattack.objective import Objective
from zoattack.optim.base import SearchRule, draw_signs
from zoattack.optim.registry import OPTIMIZERS
from zoattack.registry import Tuned

# p halves after each of these iterations of a 10,000-iteration run (the official schedule).
P_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
REFERENCE_ITERS = 10_000
DEFAULT_P_INIT = {"linf": 0.8, "l2": 0.8}
RESAMPLE_TRIES = 16


def p_schedule(p_init: float, it: int, budget: int | None = None) -> float:
    """Fraction of pixels a Square step changes at iteration ``it`` (0 = the first step after
    the start point): ``p_init`` halved at iterations 10, 50, 200, 500, 1k, 2k, 4k, 6k and 8k
    of 10,000, rescaled to ``budget`` iterations as the official code, torchattacks and
    AutoAttack do (``int(it / budget * 10000)``). ``budget=None`` keeps the 10,000 scale.
    Past the last breakpoint p stays at ``p_init / 512`` (torchattacks; the official code would
    jump back to ``p_init`` after iteration 10,000)."""
    n = REFERENCE_ITERS if budget is None else budget
    scaled = int(it / n * REFERENCE_ITERS)
    return p_init / 2 ** sum(scaled > b for b in P_BREAKPOINTS)


def window_side(p: float, h: int, w: int, norm: str) -> int:
    """Side of the square window for fraction ``p`` of an ``h x w`` image:
    ``round(sqrt(p h w))``, at least 1 (Linf) or the next odd number >= 3 (L2), at most
    ``min(h, w) - 1`` (the official caps)."""
    s = round(math.sqrt(p * h * w))
    if norm == "l2":
        s = max(s, 3)
        s += 1 - s % 2
    return max(1, min(s, min(h, w) - 1))


def _rect_bump(a: int, b: int) -> Tensor:
    """Official ``pseudo_gaussian_pert_rectangles``: nested centred rectangles weighted
    ``1 / (k + 1)**2``, unit L2 norm, ``(a, b)``."""
    out = torch.zeros(a, b, dtype=torch.float64)
    if a == 0 or b == 0:
        return out
    r0, c0 = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        out[
            max(r0 - k, 0) : min(r0 - k + 2 * k + 1, a), max(c0 - k, 0) : min(c0 - k + 2 * k + 1, b)
        ] += 1.0 / (k + 1) ** 2
    return out / out.norm()


def square_bump(s: int) -> Tensor:
    """Official ``meta_pseudo_gaussian_pert`` (two sub-squares): the top half a positive bump,
    the bottom half a negative one, unit L2 norm, ``(s, s)``, float64 (not yet transposed)."""
    out = torch.zeros(s, s, dtype=torch.float64)
    out[: s // 2] = _rect_bump(s // 2, s)
    out[s // 2 :] = -_rect_bump(s - s // 2, s)
    return out / out.norm()


@functools.lru_cache(maxsize=16)
def _positions(n: int, device: torch.device) -> Tensor:
    """``arange(n)``, built once per size: every step compares window bounds against it.
    Shared, so never modified."""
    return torch.arange(n, device=device)


@functools.lru_cache(maxsize=64)
def _cached_bump(s: int, device: torch.device) -> Tensor:
    """:func:`square_bump` built once per side (its Python loop dominated an L2 step).
    Shared, so never modified."""
    return square_bump(s).to(device)


@functools.lru_cache(maxsize=64)
def _spans(s: int, n: int, device: torch.device) -> Tensor:
    """Bool ``(n - s + 1, n)``: row ``t`` marks positions ``[t, t + s)``. Built once per
    side; shared, so never modified."""
    pos = torch.arange(n, device=device)
    start = torch.arange(n - s + 1, device=device).unsqueeze(1)
    return (pos >= start) & (pos < start + s)


@functools.lru_cache(maxsize=64)
def _span_tables(s: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`_spans` of rows as ``(h - s + 1, 1, h, 1)`` and of columns as
    ``(w - s + 1, 1, 1, w)``: one row of each, and-ed, is a window mask ``(1, h, w)`` with
    no reshaping. Shared, so never modified."""
    return _spans(s, h, device).view(-1, 1, h, 1), _spans(s, w, device).view(-1, 1, 1, w)


@functools.lru_cache(maxsize=64)
def _offset_highs(s: int, m: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(2, m)`` int64: the number of window positions ``h - s + 1`` (row 0) and
    ``w - s + 1`` (row 1) per example, and the same minus one (the largest offsets).
    Shared, so never modified."""
    highs = torch.tensor([[h - s + 1] * m, [w - s + 1] * m], dtype=torch.int64, device=device)
    return highs, highs - 1


@functools.lru_cache(maxsize=16)
def _sign_values(lr: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``lr * [-1, 1]`` in ``dtype``: indexed by a sign bit, Square's window fill. Shared,
    so never modified."""
    return lr * torch.tensor([-1.0, 1.0], dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _row_major(w: int, device: torch.device) -> Tensor:
    """``[[w, 1]]`` int64: ``_row_major(w) @ [top; left]`` is the flat index of each
    ``(top, left)`` in a row-major image of width ``w``. Shared, so never modified."""
    return torch.tensor([[w, 1]], dtype=torch.int64, device=device)


@functools.lru_cache(maxsize=64)
def _window_offsets(s: int, w: int, device: torch.device) -> Tensor:
    """Flat offsets ``(1, 1, s * s)`` of an ``s x s`` window's pixels from its top-left pixel
    in a row-major ``(h, w)`` image. Shared, so never modified."""
    ar = torch.arange(s, device=device)
    return (ar.view(s, 1) * w + ar).view(1, 1, s * s)


def paint_windows(delta: Tensor, top: Tensor, left: Tensor, s: int, fill: Tensor) -> Tensor:
    """``delta`` ``(m, c, h, w)`` with each example's ``s x s`` window at ``(top, left)`` set to
    its ``fill`` ``(m, c, 1, 1)``: ``where(window mask, fill, delta)`` as a copy and a scatter
    of the window pixels, without building and reading an image-sized mask."""
    m, c, h, w = delta.shape
    cand = delta.clone(memory_format=torch.contiguous_format)
    at = (top * w + left).view(m, 1, 1) + _window_offsets(s, w, delta.device)
    k = s * s
    cand.view(m, c, h * w).scatter_(2, at.expand(m, c, k), fill.view(m, c, 1).expand(m, c, k))
    return cand


def _window_mask(
    top: Tensor, left: Tensor, side: Tensor | None, h: int, w: int, s: int | None = None
) -> Tensor:
    """Bool masks ``(M, 1, h, w)`` of the windows ``[top, top+side) x [left, left+side)``;
    ``s``: the side when every window has it (rows of cached tables then, 3 ops in all)."""
    if s is not None:
        rows, cols = _span_tables(s, h, w, top.device)
        return rows.index_select(0, top) & cols.index_select(0, left)
    assert side is not None
    rows = _positions(h, top.device)
    cols = _positions(w, top.device)
    r = (rows >= top.unsqueeze(1)) & (rows < (top + side).unsqueeze(1))
    c = (cols >= left.unsqueeze(1)) & (cols < (left + side).unsqueeze(1))
    return (r.unsqueeze(2) & c.unsqueeze(1)).unsqueeze(1)


def _uniform_int(
    high: Tensor, generator: torch.Generator, device: torch.device, top: Tensor | None = None
) -> Tensor:
    """Uniform integers in ``[0, high)`` per entry of ``high`` ``(M,)``; ``top``: ``high - 1``
    when the caller has it."""
    u = torch.rand(
        high.shape, generator=generator, device=generator.device, dtype=torch.float64
    ).to(device)
    # u * high >= 0, where truncation toward zero (.long()) is floor.
    return torch.minimum((u * high).long(), high - 1 if top is None else top)


def _redraw_serial(
    code: Tensor,
    signs: Tensor,
    redraw: Tensor,
    generator: torch.Generator,
    where: Tensor | None = None,
    rows: list[int] | None = None,
    codes: list[list[float]] | None = None,
) -> None:
    """Square's sign redraws for rows ``redraw`` of ``signs`` ``(m, c, 1, 1)``, in place,
    exactly as the per-try loop makes them, for a CPU generator (``where``: ``redraw``'s
    nonzero ids, when the caller has them; ``rows``: the same as a list; ``codes``: ``code``
    as lists, when ``code`` holds ``signs``' values, sparing their reads).

    The loop draws ``c`` signs for each row still unchanged, try after try, until no row is
    (after ``RESAMPLE_TRIES`` tries the rest are negated). A CPU generator yields the same
    stream whether drawn in one call or many, so one pool is drawn, the tries are replayed on
    Python numbers (a handful of rows and channels), and the generator is then advanced by
    exactly the draws the loop would have made. Per try that saves ~10 tensor ops, which at
    28x28 (one channel, half of all 1-pixel windows need a redraw) were most of a step.
    """
    at = redraw.nonzero().flatten() if where is None else where
    rows = at.tolist() if rows is None else rows
    if not rows:
        return
    c = code.shape[1]
    if c == 1:
        # One channel: a redraw ends at the first draw that differs from the window's sign,
        # or with its negation after the last try; either way the new sign is -code. Only
        # how many draws the tries take depends on the bits.
        flat = code.reshape(-1)
        _replay_one_channel(
            [1 if v > 0 else 0 for v in flat.index_select(0, at).tolist()], generator
        )
        view = signs.view(-1)
        view.index_copy_(0, at, flat.index_select(0, at).neg())
        return
    saved = generator.get_state()
    pool = torch.randint(0, 2, (len(rows) * c * RESAMPLE_TRIES,), generator=generator).tolist()
    generator.set_state(saved)
    current = signs.view(-1, c).tolist() if codes is None else codes
    codes = code.tolist() if codes is None else codes
    final: dict[int, list[float]] = {r: current[r] for r in rows}
    used = 0
    active = rows
    for _ in range(RESAMPLE_TRIES):
        if not active:
            break
        still = []
        for r in active:
            new = [2.0 * b - 1.0 for b in pool[used : used + c]]
            used += c
            final[r] = new
            if all(codes[r][j] == new[j] for j in range(c)):
                still.append(r)
        active = still
    else:
        for r in active:  # the window holds lr * signs; the negation differs
            final[r] = [-v for v in final[r]]
    torch.randint(0, 2, (used,), generator=generator)  # the draws the loop made
    ids = list(final)
    signs[torch.tensor(ids, device=signs.device)] = torch.tensor(
        [final[r] for r in ids], dtype=signs.dtype, device=signs.device
    ).view(len(ids), c, 1, 1)


def _replay_one_channel(pending: list[int], generator: torch.Generator) -> None:
    """Advance a CPU ``generator`` by the sign draws the one-channel redraw loop makes for
    windows whose current sign bits are ``pending`` (1: +, 0: -): each try draws one bit per
    window still pending, and a window stays pending while its draw repeats its bit."""
    saved = generator.get_state()
    pool = torch.randint(0, 2, (len(pending) * RESAMPLE_TRIES,), generator=generator).tolist()
    generator.set_state(saved)
    used = 0
    for _ in range(RESAMPLE_TRIES):
        if not pending:
            break
        bits = pool[used : used + len(pending)]
        used += len(pending)
        pending = [p for p, b in zip(pending, bits, strict=True) if b == p]
    torch.randint(0, 2, (used,), generator=generator)  # the draws the loop made


def applied_perturbation(objective: Objective, x: Tensor, idx: Tensor) -> Tensor:
    """The perturbation an objective really applies at ``x`` ``(M, C, H, W)``.

    ``run_attack``'s objective (it has ``images(v, owner)``, ``x0`` and a ``full`` subspace)
    scores ``clip(x0 + x, 0, 1)``, so this is ``clip(x0 + x) - x0`` (no query is spent);
    for any other objective (tiled or DCT subspaces, universal perturbations, test
    functions) it is ``x`` itself.
    """
    images = getattr(objective, "images", None)
    x0 = getattr(objective, "x0", None)
    spec = getattr(getattr(objective, "subspace", None), "spec", None)
    if (
        images is None
        or not isinstance(x0, Tensor)
        or spec != "full"
        or tuple(x0.shape[1:]) != tuple(x.shape[1:])
    ):
        return x
    owner = idx.to(x0.device)
    applied = images(x.to(x0.device, x0.dtype), owner) - x0[owner]
    return applied.to(x.device, x.dtype)


def fit_l2(delta: Tensor, radius: float, dtype: torch.dtype) -> Tensor:
    """Scale each row of ``delta`` to L2 norm ``radius`` and cast to ``dtype``, making sure the
    norm computed in ``dtype`` (as the attack loop computes it) is <= ``radius``, so the loop's
    projection leaves the point unchanged."""
    shape = (-1,) + (1,) * (delta.dim() - 1)
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-300).view(shape)
    out = (delta * (radius * (1 - 1e-6) / norm)).to(dtype)
    for _ in range(8):
        over = out.flatten(1).norm(dim=1) > radius
        if not bool(over.any()):
            break
        out[over] = out[over] * (1 - 1e-5)
    return out


@OPTIMIZERS.register(
    "square",
    description="Square Attack: greedy random square updates, Linf "
    "and L2 (Andriushchenko et al. 2020)",
    flags={"adaptive": False, "sign": False, "search": True, "norms": ("linf", "l2")},
    # lr is the search radius (1.0 = eps); the default L2 attack (docs/TUNING.md).
    norm_defaults={"linf": Tuned(lr=1.0), "l2": Tuned(lr=1.0, default=True)},
)
class SquareRule(SearchRule):
    """Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), batched.

    A random search that keeps a perturbation ``delta`` (the variable ``x``) of the
    radius-``lr`` ball and each step tries one localized square update, accepted only if the
    loss strictly decreases (one query per step and example). A nonzero ``x`` at step 1 (a
    reset in mid-run) warm-starts: Linf keeps its signs (stripes fill its zeros), L2 its
    direction (rescaled to norm ``lr``).

    Linf (as the official ``square_attack_linf``):

    - start: vertical stripes, ``delta[c, :, j] = ±lr`` independently per column ``j`` of each
      channel ``c`` over the full height;
    - step ``t`` (``t = 0`` after the start): side ``s = round(sqrt(p_t H W))`` clipped to
      ``[1, min(H, W) - 1]``, a window at a uniform position, filled with ``±lr`` with one
      random sign per channel. If the window already holds exactly those values the signs are
      redrawn (``resample=True``, as the official code; after 16 redraws the signs are
      negated). The check compares ``delta`` before the [0, 1] clipping, which for ``lr < 0.5``
      is the official check: ``clip(x0 + lr)`` and ``clip(x0 - lr)`` always differ.

    L2 (as the official ``square_attack_l2``):

    - start: a grid of ``(H // 5)``-pixel blocks, each a two-lobed bump (positive top half,
      negative bottom half, randomly transposed) with a random sign per channel, the sum
      scaled to L2 norm ``lr``;
    - step: side ``s = max(round(sqrt(p_t H W)), 3)`` made odd (capped at ``min(H, W) - 1``);
      two windows at uniform positions; per channel, window 1 receives a new bump (random sign)
      plus its old normalized content, rescaled to carry the mass of both windows; window 2
      is zeroed; the whole ``delta`` is rescaled to norm ``lr``. As in the official code the
      update starts from the perturbation actually applied, ``clip(x0 + delta) - x0``
      (:func:`applied_perturbation`; the variable itself stays unclipped and the attack loop
      clips when it scores), so the mass lost to clipping, ``max(lr^2 - ||applied||^2, 0)
      / C`` per channel, goes back into window 1. Where the objective does not expose its
      clipping (tiled/DCT subspaces, other objectives) the unclipped variable is used and
      that term is 0. Windows and bump transposes are drawn per example (the official code
      draws one per batch).

    Schedule: ``p_t`` from :func:`p_schedule` (``p_init`` halved at 10, 50, 200, 500, 1k,
    2k, 4k, 6k, 8k of 10,000, rescaled to ``budget``). Window positions are uniform over all
    ``H - s + 1`` offsets (the official ``randint(0, h - s)`` never reaches the last row and
    column).

    Defaults: ``p_init`` 0.8 for both norms (torchattacks' default; the paper uses 0.05 Linf /
    0.1 L2 on ImageNet; our measurements: docs/TUNING.md); ``lr`` is the radius eps;
    ``budget`` None (the 10,000 scale).
    Shapes: ``x`` ``(N, C, H, W)`` with ``H, W >= 2`` (the attack loop's full or tiled
    variable); anything else raises ValueError.
    Queries per step and example: exactly 1 (the start point is the first step's query).
    Randomness: only the ``generator`` passed to :meth:`step`.
    """

    name = "square"

    def __init__(
        self,
        *,
        lr: float,
        norm: str = "linf",
        budget: int | None = None,
        p_init: float | None = None,
        resample: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, norm=norm, budget=budget, **kwargs)
        if p_init is None:
            p_init = DEFAULT_P_INIT[self.norm]
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
            raise ValueError(f"p_init must be a number in (0, 1], got {p_init!r}")
        if not isinstance(resample, bool):
            raise ValueError(f"resample must be True or False, got {resample!r}")
        self.p_init = float(p_init)
        self.resample = resample

    def __repr__(self) -> str:
        return (
            f"SquareRule(lr={self.lr!r}, norm={self.norm!r}, p_init={self.p_init!r}, "
            f"budget={self.budget!r})"
        )

    def check_shape(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(
                "the square rule needs variables shaped (N, C, H, W) with "
                f"H, W >= 2, got {tuple(x.shape)}"
            )

    def _sides(self, steps: Tensor, h: int, w: int) -> Tensor:
        return self._sides_and_common(steps, h, w)[0]

    def _sides_and_common(
        self,
        steps: Tensor,
        h: int,
        w: int,
        *,
        lazy: bool = False,
        span: tuple[int, int] | None = None,
    ) -> tuple[Tensor, int | None]:
        """Window sides per example ``(M,)`` and the side they all share (None if not);
        ``lazy``: the caller uses the sides only when they differ (``steps`` stands in
        for them when they do not); ``span``: ``steps``' (min, max) when already known."""
        lo, hi = span if span is not None else (int(t) for t in torch.aminmax(steps))
        if lo == hi:  # the usual case: examples attacked together share their step count
            s = window_side(p_schedule(self.p_init, lo - 2, self.budget), h, w, self.norm)
            return (steps if lazy else torch.full_like(steps, s)), s
        sides = torch.empty_like(steps)
        for t in steps.unique().tolist():
            p = p_schedule(self.p_init, int(t) - 2, self.budget)
            sides[steps == t] = window_side(p, h, w, self.norm)
        first = int(sides[0])
        return sides, first if bool((sides == first).all()) else None

    def _propose(
        self,
        objective: Objective,
        x: Tensor,
        first: Tensor,
        steps: Tensor,
        idx: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        lo, hi = self.step_span(steps, idx)
        if lo > 1:  # the usual step: every example moves, no gather and scatter needed
            # (the step counts' range also gives the window side: one sync for both)
            return self._move(objective, x, steps, idx, generator, (lo, hi))
        m = int(first.sum())
        cand = torch.empty_like(x)
        start = self._start_linf if self.norm == "linf" else self._start_l2
        cand[first] = start(x[first], generator)
        rest = ~first
        if m < len(first):
            cand[rest] = self._move(objective, x[rest], steps[rest], idx[rest], generator)
        return cand

    def _move(
        self,
        objective: Objective,
        x: Tensor,
        steps: Tensor,
        idx: Tensor,
        generator: torch.Generator,
        span: tuple[int, int] | None = None,
    ) -> Tensor:
        if self.norm == "linf":
            return self._move_linf(x, steps, generator, span)
        return self._move_l2(applied_perturbation(objective, x, idx), steps, generator, span)

    # ------------------------------------------------------------------------ Linf
    def _start_linf(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m, c, h, w = x.shape
        stripes = draw_signs((m, c, 1, w), generator, x.device, x.dtype).expand(m, c, h, w)
        return self.lr * torch.where(x != 0, x.sign(), stripes)

    def _move_linf(
        self,
        delta: Tensor,
        steps: Tensor,
        generator: torch.Generator,
        span: tuple[int, int] | None = None,
    ) -> Tensor:
        m, c, h, w = delta.shape
        side, common = self._sides_and_common(steps, h, w, lazy=True, span=span)
        dev = delta.device
        on_cpu = generator.device.type == "cpu" and dev.type == "cpu"
        if on_cpu and common is not None and self.resample:
            return self._move_linf_common(delta, common, generator)
        if on_cpu:
            # One draw for both offsets: a CPU generator's stream is the same either way.
            if common is not None:
                highs, last = _offset_highs(common, m, h, w, dev)
                top, left = _uniform_int(highs, generator, dev, last)
            else:
                top, left = _uniform_int(torch.stack([h - side + 1, w - side + 1]), generator, dev)
        else:
            if common is not None:
                side = torch.full_like(steps, common)
            top = _uniform_int(h - side + 1, generator, dev)
            left = _uniform_int(w - side + 1, generator, dev)
        signs = draw_signs((m, c, 1, 1), generator, dev, delta.dtype)
        if common is not None and not self.resample:
            return paint_windows(delta, top, left, common, self.lr * signs)
        if self.resample and common is not None:
            s = common
            # A candidate equals delta exactly when, per channel, its window already holds
            # lr * sign: decided from the windows' per-channel min and max, (m, c) numbers,
            # so the redraws touch no image-sized tensor and the candidate is built once.
            windows = delta.unfold(2, s, 1).unfold(3, s, 1)[_positions(m, dev), :, top, left]
            low, high = torch.aminmax(windows.flatten(2), dim=2)  # (m, c)
            fill = self.lr * signs
            flat = fill.view(m, c)
            redraw = ((low == flat) & (high == flat)).all(dim=1)
            rows = redraw.nonzero().flatten()  # one sync: whether any, and which
            if not rows.numel():
                return paint_windows(delta, top, left, s, fill)
            # A window's code: +1 all lr, -1 all -lr, 0 mixed. Only rows being redrawn read it,
            # and their windows hold lr * signs in every channel: their code is the signs.
            if generator.device.type == "cpu" and dev.type == "cpu":
                _redraw_serial(signs.view(m, c), signs, redraw, generator, rows)
                return paint_windows(delta, top, left, s, self.lr * signs)
            code = signs.view(m, c).clone()
            for _ in range(RESAMPLE_TRIES):
                k = int(redraw.sum())
                if not k:
                    break
                signs[redraw] = draw_signs((k, c, 1, 1), generator, dev, delta.dtype)
                redraw &= (code == signs.view(m, c)).all(dim=1)
            else:
                if bool(redraw.any()):  # the window holds lr * signs; the negation differs
                    signs[redraw] = -signs[redraw]
            return paint_windows(delta, top, left, s, self.lr * signs)
        mask = _window_mask(top, left, side, h, w)
        cand = torch.where(mask, self.lr * signs, delta)
        if self.resample:
            # Only rows whose window was unchanged are redrawn; the others keep their
            # candidate, so the check is repeated on those rows alone.
            rows = (cand == delta).flatten(1).all(dim=1).nonzero().flatten()
            for _ in range(RESAMPLE_TRIES):
                if not rows.numel():
                    break
                signs[rows] = draw_signs(
                    (rows.numel(), c, 1, 1), generator, delta.device, delta.dtype
                )
                same = self._fill_windows(cand, rows, mask, signs, delta)
                rows = rows[same]
            else:
                if rows.numel():  # the window holds lr * signs exactly; the negation differs
                    signs[rows] = -signs[rows]
                    self._fill_windows(cand, rows, mask, signs, delta)
        return cand

    def _move_linf_common(self, delta: Tensor, s: int, generator: torch.Generator) -> Tensor:
        """:meth:`_move_linf`'s usual step (CPU, every window of side ``s``, redraws on) in
        fewer ops, drawing and deciding exactly as the general form: the same ``(2, m)``
        uniform draw for the offsets, the same sign draw, the same redraw rule (a window
        already holding ``lr * signs`` in every channel), the same painted candidate.

        The window pixels are addressed once by flat index (top-left ``top * w + left`` plus
        the window's offsets): read to decide the redraws, written to paint the candidate."""
        m, c, h, w = delta.shape
        dev = delta.device
        highs, _ = _offset_highs(s, m, h, w, dev)
        # _uniform_int's draw, without its minimum: torch.rand's float64 u is at most
        # 1 - 2**-53, and u * high then rounds below high for every integer high (more than
        # half an ulp below it, or exactly representable when high is a power of two), so
        # floor (.long(), as u * high >= 0) never reaches high.
        u = torch.rand((2, m), generator=generator, dtype=torch.float64)
        corner = _row_major(w, dev) @ (u * highs).long()  # (1, m): top * w + left
        k = s * s
        at = (corner.view(m, 1, 1) + _window_offsets(s, w, dev)).expand(m, c, k)
        # draw_signs' integer draws; lr * sign looked up (+-lr in delta's dtype, the values
        # lr * signs takes) rather than computed through scalar ops.
        bits = torch.randint(0, 2, (m * c,), generator=generator)
        fill = _sign_values(self.lr, delta.dtype, dev).index_select(0, bits).view(m, c, 1, 1)
        flat = delta.reshape(m, c, h * w)
        held = flat.gather(2, at) == fill.view(m, c, 1)  # (m, c, k)
        redraw = held.view(m, c * k).all(dim=1)
        # One read: which windows redraw, and the bits drawn (the replay needs them).
        vals = torch.cat([redraw.to(bits.dtype), bits]).tolist()
        rows = [i for i in range(m) if vals[i]]
        if rows:
            drawn = vals[m:]
            where = torch.tensor(rows, device=dev)
            if c == 1:
                # The redrawn sign is the opposite one (see _redraw_serial): flip those fills.
                _replay_one_channel([drawn[r] for r in rows], generator)
                one = fill.view(m)
                one.index_copy_(0, where, one.index_select(0, where).neg())
            else:
                signs = (bits * 2 - 1).to(delta.dtype).view(m, c, 1, 1)  # draw_signs' values
                codes = [[2.0 * b - 1.0 for b in drawn[r * c : r * c + c]] for r in range(m)]
                _redraw_serial(signs.view(m, c), signs, redraw, generator, where, rows, codes)
                fill = self.lr * signs
        cand = flat.clone(memory_format=torch.contiguous_format)
        cand.scatter_(2, at, fill.view(m, c, 1).expand(m, c, k))
        return cand.view(m, c, h, w)

    def _fill_windows(
        self, cand: Tensor, rows: Tensor, mask: Tensor, signs: Tensor, delta: Tensor
    ) -> Tensor:
        """Refill the windows of ``cand[rows]`` with ``lr * signs``; True where a row still
        equals ``delta``."""
        base = delta[rows]
        sub = torch.where(mask[rows], self.lr * signs[rows], base)
        cand[rows] = sub
        return (sub == base).flatten(1).all(dim=1)

    # -------------------------------------------------------------------------- L2
    def _start_l2(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        top0, left0 = max((h - 5 * s) // 2, 0), max((w - 5 * s) // 2, 0)
        bump = _cached_bump(s, x.device)
        delta = torch.zeros(m, c, h, w, dtype=torch.float64, device=x.device)
        for i in range(h // s):
            for j in range(w // s):
                r, q = top0 + i * s, left0 + j * s
                if r >= h or q >= w:
                    continue
                hh, ww = min(s, h - r), min(s, w - q)
                flip = torch.rand(m, generator=generator, device=generator.device) > 0.5
                block = torch.where(flip.to(x.device).view(m, 1, 1), bump.T, bump)
                signs = draw_signs((m, c, 1, 1), generator, x.device, torch.float64)
                delta[:, :, r : r + hh, q : q + ww] += (block.unsqueeze(1) * signs)[:, :, :hh, :ww]
        warm = (x != 0).flatten(1).any(dim=1)
        delta[warm] = x[warm].double()
        return fit_l2(delta, float(self.lr), x.dtype)

    def _move_l2(
        self,
        delta: Tensor,
        steps: Tensor,
        generator: torch.Generator,
        span: tuple[int, int] | None = None,
    ) -> Tensor:
        m, c, h, w = delta.shape
        dev = delta.device
        d64 = delta.double()
        side, common = self._sides_and_common(steps, h, w, span=span)
        top1 = _uniform_int(h - side + 1, generator, dev)
        left1 = _uniform_int(w - side + 1, generator, dev)
        top2 = _uniform_int(h - side + 1, generator, dev)
        left2 = _uniform_int(w - side + 1, generator, dev)
        mask1 = _window_mask(top1, left1, side, h, w)
        both = mask1 | _window_mask(top2, left2, side, h, w)
        # The new bump placed in window 1 (one group per window side; transposed at random).
        flip = torch.rand(m, generator=generator, device=generator.device) > 0.5
        bump = torch.zeros(m, h, w, dtype=torch.float64, device=dev)
        groups = [common] if common is not None else side.unique().tolist()
        for s in groups:
            rows = (
                torch.arange(m, device=dev)
                if common is not None
                else (side == s).nonzero().flatten()
            )
            base = _cached_bump(int(s), dev)
            tiles = torch.where(flip.to(dev)[rows].view(-1, 1, 1), base.T, base)
            ar = torch.arange(int(s), device=dev)
            r = (top1[rows].unsqueeze(1) + ar).unsqueeze(2)
            q = (left1[rows].unsqueeze(1) + ar).unsqueeze(1)
            bump[rows.view(-1, 1, 1), r, q] = tiles
        signs = draw_signs((m, c, 1, 1), generator, dev, torch.float64)
        win_norm = (d64 * mask1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        img_norm = d64.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
        both_norm = (d64 * both).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        new = bump.unsqueeze(1) * signs + d64 * mask1 / (1e-10 + win_norm)
        new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-300)
        mass = ((self.lr**2 - img_norm**2).clamp_min(0) / c + both_norm**2).sqrt()
        out = torch.where(both, 0.0, d64)
        out = torch.where(mask1, new / new_norm * mass, out)
        return fit_l2(out, float(self.lr), delta.dtype)
