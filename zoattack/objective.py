"""Objectives: what estimators minimise, always evaluated through a :class:`BlackBox`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from zoattack.blackbox import BlackBox


@runtime_checkable
class Objective(Protocol):
    """Maps points ``(M, *shape)`` owned by examples ``owner`` ``(M,)`` to losses ``(M,)``.

    Lower is better. Implementations must route every model call through ``blackbox``.
    """

    blackbox: BlackBox

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor: ...


class FunctionObjective:
    """A scalar test function (or any scorer returning one value per input) as an objective."""

    def __init__(self, blackbox: BlackBox) -> None:
        if blackbox.output != "scores":
            raise ValueError("FunctionObjective needs a BlackBox with output='scores'")
        self.blackbox = blackbox

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        out = self.blackbox.query(points, owner)
        if out.numel() != points.shape[0]:
            raise ValueError(
                f"the function returned {out.numel()} values for {points.shape[0]} inputs; "
                "it must return one scalar per input"
            )
        return out.reshape(-1)


# A white-box stand-in's gradient at points ``(M, *shape)`` of examples ``owner`` ``(M,)``,
# same shape as the points. Computed locally (a surrogate model): never a query of the victim.
SurrogateGradient = Callable[[Tensor, Tensor], Tensor]


def surrogate_gradient_of(objective: Objective) -> SurrogateGradient | None:
    """The objective's transfer prior (its ``surrogate_gradient`` method), or None.

    Priors travel with the objective because only the objective knows how a point maps to
    the surrogate's input (the attack's subspace, projection and clean image); estimators
    that use one (``prior``) ask for it here and stay model-free.
    """
    fn = getattr(objective, "surrogate_gradient", None)
    return fn if callable(fn) else None


def feasible_prior(
    grad: Tensor, var: Tensor, expanded: Tensor, norm: str, eps: float, *, coordinatewise: bool
) -> Tensor:
    """A transfer prior ``grad`` ``(M, *var_shape)`` at variables ``var`` kept in a ``norm``
    ball of radius ``eps``, with the part removed whose descent direction ``-grad`` points out
    of the ball where ``var`` lies on its boundary (``expanded``: the variables' images).

    An attack objective scores the projected point, so outward moves from the boundary change
    nothing and the attack loop projects them away; a prior pointing there makes P-RGF take
    large-lambda steps that the projection undoes (measured on held-out images: small_cnn
    victim, small_cnn_robust prior, L2: alpha ~0.48, lambda = 1 on 74% of the steps, which
    changed the loss by -0.0003 per step against -0.12 for lambda = 0 steps). Linf with
    ``coordinatewise`` (full/tile spaces, where the projection is a clamp): coordinates at
    +-eps pushing outward are zeroed; otherwise (L2, or Linf on dct where the projection is
    a rescale): the outward radial component (along ``var``) is removed.
    """
    n = grad.shape[0]
    g, x = grad.reshape(n, -1), var.reshape(n, -1).to(grad.dtype)
    edge = eps * (1 - 1e-4)
    if norm == "linf" and coordinatewise:
        # -g_j points outward where g_j and x_j have opposite signs
        out = (x.abs() >= edge) & (g * x.sign() < 0)
        return torch.where(out, torch.zeros_like(g), g).view_as(grad)
    e = expanded.reshape(n, -1)
    size = e.norm(dim=1) if norm == "l2" else e.abs().amax(dim=1)
    r = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    c = (g * r).sum(dim=1, keepdim=True)
    out = (size >= edge).unsqueeze(1) & (c < 0)
    return torch.where(out, g - c * r, g).view_as(grad)


class WithSurrogate:
    """``objective`` plus a transfer prior ``gradient(points, owner)``: scores still go through
    ``objective`` (and its black box, which counts them); the prior costs no query."""

    def __init__(self, objective: Objective, gradient: SurrogateGradient, name: str = "") -> None:
        self.objective = objective
        self.blackbox = objective.blackbox
        self._gradient = gradient
        self.surrogate_name = name

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        return self.objective(points, owner)

    def surrogate_gradient(self, points: Tensor, owner: Tensor) -> Tensor:
        return self._gradient(points, owner)


# What evaluate_grid / evaluate_ragged call: an objective, or a scoring method of one (e.g.
# an attack objective's ``score_feasible`` for points it has already projected).
Scorer = Callable[[Tensor, Tensor], Tensor]


_grid_memo: tuple[Tensor, int, int, Tensor] | None = None


def grid_owner(idx: Tensor, k: int) -> Tensor:
    """``idx`` with each id repeated ``k`` times ``(N * K,)``: the owner of a probe grid.
    The same tensor for the same ``idx`` (unmodified) and ``k``, so the black box's ledger
    and the objective recognise it step after step without reading it. Read only."""
    global _grid_memo
    memo = _grid_memo
    if memo is not None and memo[0] is idx and memo[1] == idx._version and memo[2] == k:
        return memo[3]
    owner = idx.reshape(-1, 1).expand(-1, k).reshape(-1)
    _grid_memo = (idx, idx._version, k, owner)
    return owner


def evaluate_grid(objective: Objective | Scorer, cand: Tensor, idx: Tensor) -> Tensor:
    """Evaluate candidates ``(N, K, *shape)`` for examples ``idx`` ``(N,)`` in one call
    -> ``(N, K)``."""
    n, k = cand.shape[:2]
    owner = grid_owner(idx, k)
    out = objective(cand.reshape(n * k, *cand.shape[2:]), owner)
    return out.reshape(n, k)


def evaluate_ragged(
    objective: Objective | Scorer, cand: Tensor, keep: Tensor, idx: Tensor
) -> Tensor:
    """Evaluate only ``cand[keep]`` (``keep`` is a bool ``(N, K)`` mask) -> ``(N, K)`` with NaN
    where nothing was queried. Lets examples spend different numbers of queries in one call."""
    n, k = keep.shape
    kept = int(keep.sum())
    if kept == n * k:
        # Everything is scored (the usual call): the grid goes as a view, no gathered copy
        # of image-sized rows; the objective sees the same rows in the same order.
        return evaluate_grid(objective, cand, idx).to(device=cand.device, dtype=torch.float64)
    owner = idx.reshape(n, 1).expand(n, k)[keep]
    out = torch.full((n, k), float("nan"), dtype=torch.float64, device=cand.device)
    if kept:
        # The kept rows through a flat index_select (row copies): cand[keep] gathers
        # element by element, a large share of a step at image sizes.
        rows = keep.flatten().nonzero().flatten()
        vals = objective(cand.flatten(0, 1).index_select(0, rows), owner)
        out[keep] = vals.to(device=cand.device, dtype=torch.float64)
    return out
