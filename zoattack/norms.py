"""Threat models: projection onto the eps-ball around the clean input, and distances."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads in the functions: the registries (and `zoattack list`) need
    from torch import Tensor  # only NORMS, without paying for torch

NORMS = ("linf", "l2")
# The radius an attack uses when none is given (images in [0, 1]; the benchmarks' threat models).
DEFAULT_EPS = {"linf": 0.1, "l2": 1.5}


def parse_eps(value: str | float, option: str = "--eps") -> float:
    """A radius given as a number (``0.5``) or a fraction (``8/255``, the usual way to write
    radii in 8-bit grey levels); ValueError naming ``option`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            num, _, den = text.partition("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"{option} must be a number or a fraction such as 8/255, got {value!r}"
        ) from None


def check_norm(norm: str, eps: float) -> str:
    key = norm.lower()
    if key not in NORMS:
        raise ValueError(f"norm must be linf or l2, got {norm!r}")
    if not (eps > 0 and eps == eps and eps != float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    if key == "linf" and eps >= 1:
        raise ValueError(f"Linf eps={eps} covers the whole [0,1] image range; use eps < 1")
    return key


def project(delta: Tensor, norm: str, eps: float) -> Tensor:
    """Project perturbations ``(N, ...)`` onto the ``norm`` ball of radius ``eps`` (a new
    tensor; ``delta`` is left alone)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    scale = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * scale.unsqueeze(1)).view_as(delta)


def distance(x: Tensor, x0: Tensor, norm: str) -> Tensor:
    diff = (x - x0).flatten(1).double()
    return diff.abs().max(dim=1).values if norm == "linf" else diff.norm(dim=1)


def inside(x: Tensor, x0: Tensor, norm: str, eps: float, tol: float = 1e-5) -> Tensor:
    """Per example: within the ball (with float tolerance) and within [0, 1]."""
    in_box = (x >= 0).flatten(1).all(1) & (x <= 1).flatten(1).all(1)
    return in_box & (distance(x, x0, norm) <= eps * (1 + tol) + tol * 1e-3)


def to_image(
    x0: Tensor,
    delta: Tensor,
    norm: str,
    eps: float,
    *,
    projected: bool = False,
    consume: bool = False,
) -> Tensor:
    """The queried point: ``clip(x0 + P(delta), 0, 1)``. Clipping after projection keeps it
    in the ball for both norms (each coordinate only moves toward ``x0``).

    ``x0`` is ``(N, ...)`` like ``delta``, or ``(G, ...)`` when ``delta``'s ``N = G * R`` rows
    are ``R`` consecutive rows per image of ``x0`` (saves gathering ``x0`` per row).
    ``projected``: the caller guarantees ``P(delta) == delta`` bit for bit (an Linf clamp
    already applied: clamping is idempotent), so the projection pass is skipped; with
    ``consume`` as well, ``delta`` is a temporary of the caller's that becomes the image
    (written in place, no fresh image-sized tensor).
    """
    g = x0.shape[0]
    if not projected:
        out = project(delta, norm, eps)
    elif consume and delta.is_contiguous():
        out = delta
    else:
        import torch  # a cached module: no cost after the first call

        # delta + x0 into a fresh tensor: the same sums as P(delta) + x0 below.
        if g == delta.shape[0]:
            out = torch.add(delta, x0)
        else:
            out = torch.add(
                delta.reshape(g, delta.shape[0] // g, *delta.shape[1:]), x0.unsqueeze(1)
            ).view(delta.shape)
        return out.clamp_(0.0, 1.0)
    # In place on the projection's own buffer: each (N, d) temporary is a pass and, at image
    # sizes, fresh pages. P(delta) + x0 == x0 + P(delta) bit for bit.
    if g == out.shape[0]:
        out.add_(x0)
    else:
        out.view(g, out.shape[0] // g, *out.shape[1:]).add_(x0.unsqueeze(1))
    return out.clamp_(0.0, 1.0)


__all__ = ["NORMS", "check_norm", "distance", "inside", "project", "to_image"]
