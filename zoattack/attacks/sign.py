"""SignHunter-style sign-bit search at the vertices of the Linf ball."""

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

STARTS = ("ones", "stripes")
BLOCK_ORDERS = ("column", "row", "random")


def column_major_order(shape: tuple[int, ...]) -> Tensor:
    """Flat (C-H-W) indices of one example's coordinates listed in column-major order.

    For a ``(C, H, W)`` variable the coordinates are ordered by (channel, column, row), so
    contiguous chunks are vertical bands, then column segments. Other shapes keep the flat
    order.
    """
    d = 1
    for s in shape:
        d *= s
    flat = torch.arange(d)
    if len(shape) != 3:
        return flat
    c, h, w = shape
    return flat.view(c, h, w).transpose(1, 2).reshape(-1)


def block_bounds(level: Tensor, chunk: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """``[start, end)`` of chunk ``chunk`` at level ``level`` (``2**level`` chunks of
    ``ceil(d / 2**level)`` coordinates; the last chunks may be short or empty)."""
    parts = torch.ones_like(level) << level
    length = (d + parts - 1) // parts
    start = (chunk * length).clamp(max=d)
    return start, (start + length).clamp(max=d)


def finest_level(d: int) -> int:
    """``ceil(log2 d)``: the level whose chunks are single coordinates."""
    return max(d - 1, 0).bit_length()


@functools.lru_cache(maxsize=8)
def schedule_tables(d: int, levels: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The level/chunk schedule as tables over heap nodes ``i = 2**level + chunk`` for
    levels ``0..levels - 1``: ``(lo (T, 1), hi (T, 1), next (T,))`` with ``T = 2**levels``,
    the bounds of :func:`block_bounds` and the node the search moves to after ``i``.

    A step then reads its chunk with two row lookups and advances with a third instead of
    re-deriving both from (level, chunk) with a dozen small ops. ``levels`` may exceed
    ``finest_level(d) + 1`` (nodes a larger variable left behind); those nodes follow the
    same rule as the arithmetic (the next one is at level 0). Shared, so never modified.
    """
    finest = finest_level(d)
    nodes = torch.arange(1 << levels, dtype=torch.int64)
    level = torch.zeros_like(nodes)
    for h in range(1, levels):
        level[1 << h :] += 1
    level[0] = 0  # node 0 is unused (reset fills 1, the root)
    chunk = nodes - (torch.ones_like(level) << level)
    chunk[0] = 0
    lo, hi = block_bounds(level, chunk, d)
    nxt = chunk + 1
    up = (nxt >= (torch.ones_like(level) << level)) | (hi >= d)
    new_level = torch.where(up, level + 1, level)
    new_level = torch.where(new_level > finest, 0, new_level)
    new_chunk = torch.where(up, 0, nxt)
    following = (torch.ones_like(new_level) << new_level) + new_chunk
    return lo.view(-1, 1).to(device), hi.view(-1, 1).to(device), following.to(device)


# Up to this many levels the tables are also kept as Python lists (16,384 nodes), so a step
# whose examples share one node reads its chunk without a tensor lookup and sync.
_LIST_LEVELS = 14


@functools.lru_cache(maxsize=8)
def _schedule_lists(d: int, levels: int) -> tuple[list[int], list[int], list[int]]:
    """:func:`schedule_tables` as Python lists ``(lo, hi, next)``. Shared, never modified."""
    lo, hi, nxt = schedule_tables(d, levels, torch.device("cpu"))
    return lo.flatten().tolist(), hi.flatten().tolist(), nxt.tolist()


@OPTIMIZERS.register(
    "sign",
    description="SignHunter: greedy block sign flips at the Linf vertex "
    "(Al-Dujaili & O'Reilly 2020)",
    aliases=("signhunter",),
    flags={"adaptive": False, "sign": False, "search": True, "norms": ("linf",)},
    # lr is the search radius (1.0 = eps); the default Linf attack (docs/TUNING.md).
    norm_defaults={"linf": Tuned(lr=1.0, default=True)},
)
class SignRule(SearchRule):
    """SignHunter (Al-Dujaili & O'Reilly, "Sign bits are all you need for black-box attacks",
    ICLR 2020), batched, with column-major blocks by default.

    Under Linf the best first-order step is ``eps * sign(grad)``, so the search runs over sign
    vectors ``s`` in {-1, +1}^d at the vertex ``x = lr * s`` (``x`` is the perturbation):

    - step 1: ``s`` = all ones (``start="ones"``) or vertical stripes (``"stripes"``: one random
      sign per column of each channel; i.i.d. signs for non-``(C, H, W)`` variables); the vertex
      is scored and accepted unconditionally. A nonzero ``x`` at step 1 (a reset in mid-run)
      warm-starts at ``s = sign(x)``, the start pattern filling its zeros;
    - then, at level ``h`` the d coordinates (in ``block_order``) are split into ``2**h``
      contiguous chunks of ``ceil(d / 2**h)``; each step flips one chunk's signs - a forward
      finite difference of radius ``2 lr`` along a block-sign direction, measured against the
      cached best loss - and keeps the flip only if the loss strictly decreases;
    - after the last chunk of a level comes level ``h + 1``; after single coordinates
      (``h = ceil(log2 d)``) the search restarts at ``h = 0`` from the current ``s``.

    Block orders: ``"column"`` (default; (channel, column, row) order for ``(N, C, H, W)``
    variables, flat order otherwise), ``"row"`` (flat C-H-W order, as in the reference code),
    ``"random"`` (a fixed random permutation per example, drawn at its first step).

    Defaults: ``start="ones"``, ``block_order="column"``; ``lr`` is the Linf radius eps; Linf
    only (``norm="l2"`` raises). ``budget`` is accepted for a uniform interface and unused.
    Shapes: ``x`` ``(N, *shape)``.
    Queries per step and example: exactly 1 (the start point is the first step's query).
    ``StepResult.grad`` reports ``-s``: the current estimate of ``sign(grad f)``.
    """

    name = "sign"
    supported_norms = ("linf",)

    def __init__(
        self,
        *,
        lr: float,
        norm: str = "linf",
        budget: int | None = None,
        start: str = "ones",
        block_order: str = "column",
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, norm=norm, budget=budget, **kwargs)
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        if block_order not in BLOCK_ORDERS:
            raise ValueError(
                f"block_order must be one of {', '.join(BLOCK_ORDERS)}, got {block_order!r}"
            )
        self.start = start
        self.block_order = block_order
        self._rank_cache: dict[tuple[Any, ...], Tensor] = {}
        self._pending: tuple[Tensor, Tensor, Tensor, int, int | None] | None = None
        # (node table, its version, idx, its version, the node rows idx all hold or None when
        # they differ): examples attacked together move through the schedule in step, and
        # then a step's chunk is one range of ranks for all of them (see _shared_node).
        self._shared: tuple[Tensor, int, Tensor, int, int | None] | None = None
        # Table size (levels) of the schedule: at least what any stored node needs.
        self._levels_seen = 0
        self._radius_cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return f"SignRule(lr={self.lr!r}, start={self.start!r}, block_order={self.block_order!r})"

    # -------------------------------------------------------------------- helpers
    def _ranks(self, x: Tensor, idx: Tensor, first: Tensor, generator: torch.Generator) -> Tensor:
        """Position of each flat coordinate in the block order: ``(N, d)``, or ``(d,)`` when
        shared by all examples. Chunks are rank ranges, so a step's flip mask is two
        comparisons rather than a scatter through the order."""
        shape = tuple(x.shape[1:])
        d = math.prod(shape)
        if self.block_order == "random":
            held = self.state.tensors.get("perm")
            perm = self.state.get("perm", idx, (d,), dtype=torch.int64, device=x.device)
            # A variable of a new size (a subspace refine) voids every stored permutation:
            # each example draws a new one (the zero rows left would scatter into only one
            # rank and leave the others uninitialised).
            draw = first if held is None or held.shape[1:] == (d,) else torch.ones_like(first)
            m = int(draw.sum())
            if m:
                keys = torch.rand(m, d, generator=generator, device=generator.device)
                perm[draw] = keys.argsort(dim=1).to(x.device)
                self.state.set("perm", idx, perm)
            ranks = torch.empty_like(perm)
            return ranks.scatter_(1, perm, torch.arange(d, device=x.device).expand_as(perm))
        # Shared orders depend only on the shape; rebuilding them each step was a measurable
        # share of a step's cost.
        key = (self.block_order, shape, x.device)
        cache = self._rank_cache
        if key not in cache:
            order = column_major_order(shape) if self.block_order == "column" else torch.arange(d)
            ranks = torch.empty_like(order)
            ranks[order] = torch.arange(d)
            cache[key] = ranks.to(x.device)
        return cache[key]

    def _start_signs(self, x: Tensor, m: int, generator: torch.Generator) -> Tensor:
        shape = tuple(x.shape[1:])
        if self.start == "ones":
            return torch.ones(m, *shape, dtype=x.dtype, device=x.device)
        if len(shape) == 3:
            c, h, w = shape
            return draw_signs((m, c, 1, w), generator, x.device, x.dtype).expand(m, c, h, w)
        return draw_signs((m, *shape), generator, x.device, x.dtype)

    def _schedule(self, x: Tensor, idx: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Each example's schedule node ``2**level + chunk`` ``(N,)`` (1, the root, at the
        start or after a reset) and the tables for this variable size."""
        node = self.state.get("node", idx, (), dtype=torch.int64, device=x.device, fill=1)
        d = math.prod(x.shape[1:])
        self._levels_seen = max(self._levels_seen, finest_level(d) + 1)
        return node, schedule_tables(d, self._levels_seen, x.device)

    def _shared_node(self, node: Tensor, idx: Tensor) -> int | None:
        """The node every example in ``idx`` is at, or None when they differ: read from
        ``node`` (rows ``idx`` of the table) once, then followed by :meth:`_commit`."""
        t = self.state.tensors["node"]
        memo = self._shared
        if (
            memo is not None
            and memo[0] is t
            and memo[1] == t._version
            and memo[2] is idx
            and memo[3] == idx._version
        ):
            return memo[4]
        lo, hi = (int(v) for v in torch.aminmax(node)) if node.numel() else (0, 1)
        value = lo if lo == hi else None
        self._shared = (t, t._version, idx, idx._version, value)
        return value

    def _node_row(self, tables: tuple[Tensor, Tensor, Tensor], d: int, u: int) -> tuple[int, int]:
        """``(lo, hi)`` of node ``u``."""
        if self._levels_seen <= _LIST_LEVELS:
            lo, hi, _ = _schedule_lists(d, self._levels_seen)
            return lo[u], hi[u]
        return int(tables[0][u, 0]), int(tables[1][u, 0])

    def _next_node(self, next_of: Tensor, d: int, u: int) -> int:
        if self._levels_seen <= _LIST_LEVELS:
            return _schedule_lists(d, self._levels_seen)[2][u]
        return int(next_of[u])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._shared = None
        node = self.state.tensors.get("node")
        if node is not None and node.numel():
            self._levels_seen = max(self._levels_seen, int(node.max()).bit_length())

    # ----------------------------------------------------------------- the search
    def _propose(
        self,
        objective: Objective,
        x: Tensor,
        first: Tensor,
        steps: Tensor,
        idx: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        n, d = x.shape[0], math.prod(x.shape[1:])
        ranks = self._ranks(x, idx, first, generator)
        node, tables = self._schedule(x, idx)
        lo_of, hi_of, next_of = tables
        lo, hi = self.step_span(steps, idx)
        m = 0 if lo > 1 else (n if hi == 1 else int(first.sum()))
        shared = self._shared_node(node, idx) if ranks.dim() == 1 else None
        # Kept for _commit, which SearchRule.step calls right after scoring these candidates.
        self._pending = (idx, node, next_of, m, shared)
        below = (x < 0).view(n, d) if x.is_contiguous() else (x < 0).reshape(n, d)
        if shared is not None:
            # One chunk for every example: its mask is built once over d, not per example.
            lo, hi = self._node_row(tables, d, shared)
            flip = ranks >= lo
            flip &= ranks < hi
            negative = below.ne_(flip)
        else:
            flip = ranks >= lo_of.index_select(0, node)
            flip &= ranks < hi_of.index_select(0, node)
            # The flipped sign is -1 where exactly one of "x < 0" and "in the chunk" holds.
            negative = flip.ne_(below)
        if not m:
            # lr * (+-1) in x's dtype, written once (no sign tensor, no second pass).
            pos, neg = self._radius(x)
            return torch.where(negative, neg, pos).view_as(x)
        cand = torch.where(negative, -1.0, 1.0).to(x.dtype)
        init = self._start_signs(x, m, generator).reshape(m, d)
        warm = x[first].reshape(m, d).sign()
        cand[first] = torch.where(warm != 0, warm, init)
        return self.lr * cand.view_as(x)

    def _radius(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``lr`` and ``-lr`` as 0-dim tensors of ``x``'s dtype, built once per dtype and
        device (shared, so never modified)."""
        key = (x.dtype, x.device)
        pair = self._radius_cache.get(key)
        if pair is None:
            pos = torch.tensor(self.lr, dtype=x.dtype, device=x.device) * 1.0
            pair = self._radius_cache[key] = (pos, -pos)
        return pair

    def _commit(self, x: Tensor, idx: Tensor, first: Tensor, accept: Tensor) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is idx:
            _, node, next_of, m, shared = pending
        else:
            node, (_, _, next_of) = self._schedule(x, idx)
            m, shared = int(first.sum()), None
            self._shared = None
        new = next_of.index_select(0, node)
        if m:
            # The first step scores the start point and leaves the schedule at the root.
            new = torch.where(first, node, new)
        self.state.set("node", idx, new)
        # Follow the shared node: rows idx all moved to its successor (or, all at their first
        # step, stayed); mixed rows are taken to stay mixed (the general path is always right).
        memo = self._shared
        if memo is None or memo[2] is not idx:
            return
        if shared is not None and m and m != node.numel():
            self._shared = None  # some rows moved, some stayed: read the table again
            return
        if shared is not None and not m:
            shared = self._next_node(next_of, math.prod(x.shape[1:]), shared)
        t = self.state.tensors["node"]
        self._shared = (t, t._version, idx, idx._version, shared)

    def _grad(self, x_next: Tensor) -> Tensor:
        return torch.where(x_next < 0, 1.0, -1.0).to(x_next.dtype)
