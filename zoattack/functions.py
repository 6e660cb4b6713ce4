"""Synthetic test functions for benchmarks, tests and `zoattack optimize`.

Each maps a batch of points ``(M, d)`` to values ``(M,)``; all are batched tensor code, so a
"bare evaluation" timing is the fair baseline for per-query overhead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from zoattack.registry import Entry, Registry


@dataclass(frozen=True)
class TestFunction:
    """A batched test function with its optimum value and a standard start point."""

    name: str
    fn: Callable[[Tensor], Tensor]
    start: Callable[[int, torch.Generator, torch.dtype], Tensor]
    minimum: float

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


FUNCTIONS: Registry[TestFunction] = Registry("function")


def _quadratic(x: Tensor) -> Tensor:
    # Condition number 100: curvature spread evenly in log scale over coordinates.
    d = x.shape[-1]
    a = (
        torch.logspace(0, 2, d, dtype=x.dtype, device=x.device)
        if d > 1
        else torch.ones(1, dtype=x.dtype, device=x.device)
    )
    return 0.5 * (a * x * x).sum(-1) / d


def _rosenbrock(x: Tensor) -> Tensor:
    # Chained Rosenbrock (CUTEst's SROSENBR family shape), averaged per term.
    d = x.shape[-1]
    terms = 100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.0 - x[..., :-1]) ** 2
    return terms.sum(-1) / max(1, d - 1)


def _start_quadratic(d: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randn(d, generator=gen, device=gen.device, dtype=dtype)


def _start_rosenbrock(d: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.zeros(d, dtype=dtype, device=gen.device) + 0.1 * torch.randn(
        d, generator=gen, device=gen.device, dtype=dtype
    )


def _register(
    name: str,
    fn: Callable[[Tensor], Tensor],
    start: Callable[[int, torch.Generator, torch.dtype], Tensor],
    desc: str,
) -> None:
    FUNCTIONS.add(Entry(name, lambda: TestFunction(name, fn, start, 0.0), desc))


_register(
    "quadratic",
    _quadratic,
    _start_quadratic,
    "0.5/d sum a_i x_i^2, a log-spaced in [1, 100]; start N(0, I); minimum 0 at 0",
)
_register(
    "rosenbrock",
    _rosenbrock,
    _start_rosenbrock,
    "chained Rosenbrock averaged over d-1 terms; start 0.1 N(0, I); minimum 0 at 1",
)


def get_function(name: str) -> TestFunction:
    return FUNCTIONS.create(name)


def starts(
    fn: TestFunction, n: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(n, d)`` start points, one per seed/example, from ``generator``."""
    return torch.stack([fn.start(d, generator, dtype) for _ in range(n)])


__all__ = ["FUNCTIONS", "TestFunction", "get_function", "starts"]
