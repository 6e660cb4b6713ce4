"""Shared machinery for gradient estimators.

Every estimator maps N independent problems at once: ``x`` is ``(N, *shape)``; candidates for
all examples go to the objective in one batched call (ragged when examples spend different
numbers of queries) and come back as losses. The returned :class:`Estimate` carries the exact
queries each example spent, which tests check against the :class:`~zoattack.BlackBox` ledger.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from zoattack._state import PerExampleState
from zoattack.errors import PrecisionError
from zoattack.objective import Objective, evaluate_grid, evaluate_ragged

DIFFERENCES = ("forward", "central")


@dataclass
class Estimate:
    """Result of one estimator call.

    Attributes:
        grad: gradient estimate, shaped like ``x`` ``(N, *shape)``.
        loss: ``f(x)`` per example ``(N,)`` when the estimator evaluated (or was given) it,
            else None (central differences never score ``x`` itself).
        queries: queries spent per example in this call ``(N,)``, ``int64``.
    """

    grad: Tensor
    loss: Tensor | None
    queries: Tensor


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """At least float32: half-precision differences at small ``mu`` are rounding noise."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def check_mu_resolvable(x: Tensor, step: float, mu: float, dtype: torch.dtype) -> None:
    """Reject ``mu`` when a typical per-coordinate displacement is lost to rounding at ``x``."""
    scale = float(x.abs().max()) if x.numel() else 0.0
    ulp = torch.finfo(dtype).eps * max(scale, torch.finfo(dtype).tiny)
    if step < 16 * ulp:
        need = 16 * ulp * mu / step
        raise PrecisionError(
            f"mu={mu:g} is below {dtype} resolution here: a typical coordinate moves by "
            f"{step:.3g} at |x| up to {scale:.3g} (spacing {ulp:.3g}); use mu >= {need:.2g} "
            "or float64 inputs"
        )


class GradientEstimator(abc.ABC):
    """Base class. Subclasses implement :meth:`_estimate` on flattened ``(N, d)`` inputs.

    Args:
        num_samples: directions (K) per call.
        mu: finite-difference radius (per-coordinate scale of the displacement).
        difference: ``"forward"`` (shares one base query ``f(x)``) or ``"central"``
            (antithetic pairs, ``2K`` queries, no base query).
    """

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False
    supports_central: ClassVar[bool] = True

    def __init__(
        self, *, num_samples: int = 10, mu: float = 1e-3, difference: str = "forward"
    ) -> None:
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples}")
        check_positive("mu", mu)
        if difference not in DIFFERENCES:
            raise ValueError(f"difference must be 'forward' or 'central', got {difference!r}")
        if difference == "central" and not self.supports_central:
            raise ValueError(f"difference='central' is not supported by the {self.name} estimator")
        self.num_samples = int(num_samples)
        self.mu = float(mu)
        self.difference = difference

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, mu={self.mu:g}, "
            f"difference={self.difference!r})"
        )

    @abc.abstractmethod
    def queries_per_call(self, dim: int) -> int:
        """Exact queries per example for one call on a ``dim``-dimensional problem when
        ``f(x)`` is not supplied (stateful estimators: the cost with empty state, an upper
        bound)."""

    def estimate(
        self,
        objective: Objective,
        x: Tensor,
        *,
        generator: torch.Generator,
        idx: Tensor | None = None,
        fx: Tensor | None = None,
    ) -> Estimate:
        """Estimate the gradient of ``objective`` at ``x`` ``(N, *shape)``.

        Args:
            objective: maps points to losses; the only way to reach the model.
            x: current points, one per example.
            generator: the only source of randomness; must live on ``x``'s device.
            idx: global example ids ``(N,)`` (default ``0..N-1``); used for query accounting
                and per-example state.
            fx: known ``f(x)`` ``(N,)``; NaN entries are unknown. Known values save the
                base query of forward differences.
        """
        if x.dim() < 2:
            raise ValueError(f"x must be shaped (N, *shape), got {tuple(x.shape)}")
        n = x.shape[0]
        if generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but x is on {x.device}; "
                "create the generator on the data's device (zoattack.make_generator)"
            )
        if idx is None:
            idx = torch.arange(n, device=x.device)
        idx = idx.to(x.device)
        dtype = compute_dtype(x)
        flat = x.reshape(n, -1).to(dtype)
        if fx is None:
            fx = torch.full((n,), float("nan"), dtype=torch.float64, device=x.device)
        else:
            fx = fx.to(device=x.device, dtype=torch.float64).reshape(n)
        est = self._estimate(objective, flat, x.shape[1:], generator, idx, fx)
        est.grad = est.grad.reshape(x.shape).to(dtype)
        return est

    @abc.abstractmethod
    def _estimate(
        self,
        objective: Objective,
        x: Tensor,
        shape: torch.Size,
        generator: torch.Generator,
        idx: Tensor,
        fx: Tensor,
    ) -> Estimate: ...

    # Stateless estimators keep nothing; stateful ones override these.
    def reset(self, mask: Tensor | None = None) -> None:
        """Forget per-example state (all, or where ``mask`` is True)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StatefulEstimator(GradientEstimator):
    """An estimator with per-example memory (:class:`PerExampleState` rows keyed by global
    example id): reset by mask, saved and restored with the rule that owns it."""

    stateful = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = PerExampleState()

    def reset(self, mask: Tensor | None = None) -> None:
        self.state.reset(mask)

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)


def query_with_base(
    objective: Objective,
    x: Tensor,
    disp: Tensor,
    shape: torch.Size,
    idx: Tensor,
    fx: Tensor,
    fresh: Tensor | None = None,
    *,
    need_actual: bool = True,
    consume: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Score ``x`` (where ``fx`` is unknown) and ``x + disp`` in one ragged call.

    Args:
        x: ``(N, d)``; disp: ``(N, K, d)`` displacements; fresh: bool ``(N, K)``, which
            displacements to score (default all).
        consume: ``disp`` is the caller's temporary and may be overwritten (the probe
            points are built in its memory).
        need_actual: return the displacement actually applied (else None, saving a pass
            over ``(N, K, d)``).

    Returns:
        ``(f0, vals, actual, queries)``: ``f(x)`` ``(N,)``, values ``(N, K)`` (NaN where not
        scored), the displacement actually applied after rounding ``(N, K, d)`` (or None),
        and queries per example.
    """
    # In place where allowed: a fresh (N, K, d) buffer per step costs page faults as well
    # as a pass. disp + x == x + disp bit for bit.
    pts = disp.add_(x.unsqueeze(1)) if consume else x.unsqueeze(1) + disp
    actual = pts - x.unsqueeze(1) if need_actual else None
    f0, vals, queries = query_points(objective, x, pts, shape, idx, fx, fresh)
    return f0, vals, actual, queries


def query_points(
    objective: Objective,
    x: Tensor,
    pts: Tensor,
    shape: torch.Size,
    idx: Tensor,
    fx: Tensor,
    fresh: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score ``x`` (where ``fx`` is unknown) and the probe points ``pts`` ``(N, K, d)`` in
    one ragged call -> ``(f0, vals, queries)`` as :func:`query_with_base`."""
    n, k, _ = pts.shape
    base = torch.isnan(fx)
    if fresh is None and not bool(base.any()):
        # The usual call (f(x) known): the probes alone, with no concatenated copy.
        vals = evaluate_grid(objective, pts.view(n, k, *shape), idx).to(
            device=x.device, dtype=torch.float64
        )
        return fx, vals, torch.full((n,), k, dtype=torch.int64, device=x.device)
    cand = torch.cat([x.unsqueeze(1), pts], dim=1)
    keep = torch.ones(n, k + 1, dtype=torch.bool, device=x.device)
    keep[:, 0] = base
    if fresh is not None:
        keep[:, 1:] = fresh
    vals = evaluate_ragged(objective, cand.reshape(n, k + 1, *shape), keep, idx)
    f0 = torch.where(base, vals[:, 0], fx)
    return f0, vals[:, 1:], keep.sum(dim=1)


def query_pairs(
    objective: Objective, x: Tensor, disp: Tensor, shape: torch.Size, idx: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Score ``x + disp`` and ``x - disp`` in one call -> ``(f_plus, f_minus, queries)``."""
    n, k, _ = disp.shape
    cand = torch.empty(
        n, 2 * k, disp.shape[2], dtype=torch.promote_types(x.dtype, disp.dtype), device=x.device
    )
    torch.add(x.unsqueeze(1), disp, out=cand[:, :k])
    torch.sub(x.unsqueeze(1), disp, out=cand[:, k:])
    vals = evaluate_grid(objective, cand.reshape(n, 2 * k, *shape), idx).to(
        device=x.device, dtype=torch.float64
    )
    return vals[:, :k], vals[:, k:], torch.full((n,), 2 * k, dtype=torch.int64, device=x.device)


class RandomDirectionEstimator(GradientEstimator):
    """Two-point estimates along K random directions drawn per example per call.

    ``g = c/K * sum_k D_k u_k`` with ``D_k = (f(x+mu u_k) - f(x)) / mu`` (forward, K+1
    queries) or ``(f(x+mu u_k) - f(x-mu u_k)) / (2 mu)`` (central, 2K queries); the
    constant ``c`` makes ``E[c u u^T] = I`` so the estimate targets the gradient of the
    smoothed function.
    """

    @abc.abstractmethod
    def directions(
        self, n: int, k: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> Tensor:
        """``(n, k, d)`` directions."""

    @abc.abstractmethod
    def scale(self, d: int) -> float:
        """The constant ``c`` with ``E[c u u^T] = I``."""

    @abc.abstractmethod
    def coordinate_size(self, d: int) -> float:
        """Typical ``|u_i|``, used for the float-resolution check on ``mu``."""

    def queries_per_call(self, dim: int) -> int:
        return self.num_samples + 1 if self.difference == "forward" else 2 * self.num_samples

    def _estimate(
        self,
        objective: Objective,
        x: Tensor,
        shape: torch.Size,
        generator: torch.Generator,
        idx: Tensor,
        fx: Tensor,
    ) -> Estimate:
        n, d = x.shape
        k = self.num_samples
        check_mu_resolvable(x, self.mu * self.coordinate_size(d), self.mu, x.dtype)
        u = self.directions(n, k, d, generator, x.dtype)
        return two_point_estimate(
            objective, x, u, self.mu, self.scale(d), self.difference, shape, idx, fx
        )


def two_point_estimate(
    objective: Objective,
    x: Tensor,
    u: Tensor,
    mu: float,
    scale: float,
    difference: str,
    shape: torch.Size,
    idx: Tensor,
    fx: Tensor,
) -> Estimate:
    """``scale/K * sum_k D_k u_k`` for given directions ``u`` ``(N, K, d)``."""
    k = u.shape[1]
    if difference == "forward":
        f0, vals, _, q = query_with_base(
            objective, x, mu * u, shape, idx, fx, need_actual=False, consume=True
        )
        diffs = (vals - f0.unsqueeze(1)) / mu
        loss: Tensor | None = f0
    else:
        fp, fm, q = query_pairs(objective, x, mu * u, shape, idx)
        diffs = (fp - fm) / (2 * mu)
        loss = None if bool(torch.isnan(fx).any()) else fx
    grad = torch.einsum("nk,nkd->nd", diffs.to(x.dtype), u) * (scale / k)
    return Estimate(grad=grad, loss=loss, queries=q)


class Workspace:
    """Scratch buffers an estimator reuses from call to call.

    At image sizes a fresh ``(N, K, d)`` temporary is tens of megabytes: the allocator maps
    new pages for it and the first touch of each page faults, which cost more than the
    arithmetic itself (up to 3x a pass). A buffer is handed out again for the next call of the
    same shape, so nothing in it survives a call; never give one to code that may keep it.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> Tensor:
        """A contiguous ``shape`` buffer (uninitialised; the leading rows of a larger one)."""
        buf = self._bufs.get(name)
        if (
            buf is None
            or buf.dtype != dtype
            or buf.device != torch.device(device)
            or tuple(buf.shape[1:]) != tuple(shape[1:])
            or len(buf) < shape[0]
        ):
            buf = self._bufs[name] = torch.empty(shape, dtype=dtype, device=device)
        return buf if len(buf) == shape[0] else buf[: shape[0]]

    def swap(self, name: str, buf: Tensor) -> None:
        """Hand ``buf`` (a tensor the caller no longer uses) in as the next ``name`` buffer."""
        self._bufs[name] = buf

    def clear(self) -> None:
        self._bufs.clear()
