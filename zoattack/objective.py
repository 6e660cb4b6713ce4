"""Objectives: what estimators minimise, always evaluated through a :class:`BlackBox`."""

from __future__ import annotations

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


def evaluate_grid(objective: Objective, cand: Tensor, idx: Tensor) -> Tensor:
    """Evaluate candidates ``(N, K, *shape)`` for examples ``idx`` ``(N,)`` in one call
    -> ``(N, K)``."""
    n, k = cand.shape[:2]
    owner = idx.reshape(n, 1).expand(n, k).reshape(-1)
    out = objective(cand.reshape(n * k, *cand.shape[2:]), owner)
    return out.reshape(n, k)


def evaluate_ragged(objective: Objective, cand: Tensor, keep: Tensor, idx: Tensor) -> Tensor:
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
