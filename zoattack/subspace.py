"""Search subspaces: optimise a lower-dimensional variable that is expanded to image size.

``tile:K`` searches a ``(C, K, K)`` variable upsampled by nearest neighbour (each variable
coordinate moves a block of pixels), the dimension-reduction idea ZO-AE-DS and tiling
attacks rely on; ``dct:K`` searches the lowest ``K x K`` frequencies of an orthonormal 2-D
DCT-II per channel (Guo et al. 2019's low-frequency attacks); ``full`` searches pixels.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def dct_matrix(n: int, k: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """First ``k`` rows of the orthonormal DCT-II matrix of size ``n`` -> ``(k, n)``."""
    i = torch.arange(n, dtype=torch.float64)
    f = torch.arange(k, dtype=torch.float64).unsqueeze(1)
    m = torch.cos(math.pi * (2 * i + 1) * f / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype)


class Subspace:
    """Maps a variable ``(N, *var_shape)`` to a perturbation ``(N, *image_shape)``."""

    def __init__(self, spec: str, image_shape: tuple[int, ...]) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"subspaces need (C, H, W) inputs, got {image_shape}")
        c, h, w = image_shape
        self.spec = spec
        self.image_shape = tuple(image_shape)
        if spec == "full":
            self.var_shape: tuple[int, ...] = tuple(image_shape)
        elif spec.startswith(("tile:", "dct:")):
            kind, _, size = spec.partition(":")
            try:
                k = int(size)
            except ValueError:
                raise ValueError(f"subspace must be full, tile:K or dct:K, got {spec!r}") from None
            if not 1 <= k <= min(h, w):
                raise ValueError(f"{kind} size K must be in [1, {min(h, w)}], got {k}")
            self.var_shape = (c, k, k)
            if kind == "dct":
                self._rows, self._cols = dct_matrix(h, k), dct_matrix(w, k)
        else:
            raise ValueError(f"subspace must be full, tile:K or dct:K, got {spec!r}")

    @property
    def dim(self) -> int:
        n = 1
        for s in self.var_shape:
            n *= s
        return n

    def expand(self, v: Tensor) -> Tensor:
        """``(N, *var_shape)`` -> ``(N, C, H, W)``. Linear; tile expansion preserves Linf,
        DCT expansion (orthonormal rows) preserves L2."""
        if self.spec == "full":
            return v
        if self.spec.startswith("dct:"):
            rows = self._rows.to(v.device, v.dtype)
            cols = self._cols.to(v.device, v.dtype)
            return torch.einsum("kh,nckl,lw->nchw", rows, v, cols)
        h, w = self.image_shape[1:]
        if v.requires_grad and torch.is_grad_enabled():
            # (Autograd: interpolate's own backward, whose sums the surrogate prior reads.)
            return F.interpolate(v, size=(h, w), mode="nearest")
        # The same copy as nearest interpolation, through its own per-axis source maps: a
        # column gather on the small variable, then whole output rows gathered (row copies),
        # instead of a per-pixel index computation (5x cheaper at 3x32x32).
        rows, cols = _nearest_maps(self.var_shape[1], h, w, v.device)
        return v.index_select(3, cols).index_select(2, rows)

    def project(self, v: Tensor, norm: str, eps: float) -> Tensor:
        """Keep the variable's expansion inside the ``norm`` ball of radius ``eps``.

        Exact for Linf on full/tile (a clamp: each variable coordinate is a block of pixels)
        and for L2 (a rescale of the expansion); for Linf on ``dct`` the variable is rescaled
        until its expansion fits, a feasible point rather than the Euclidean projection.
        """
        if norm == "linf" and not self.spec.startswith("dct:"):
            if v.device.type == "cpu" and v.numel():
                # Usually nothing is outside (the rules' steps stay in the ball): a read-only
                # check spares the image-sized copy. (On GPUs the check would be a sync.)
                low, high = (float(t) for t in torch.aminmax(v))
                # The clamp bounds in v's dtype: a float32 step of exactly eps sits at
                # float32(eps), which may lie above the Python float eps yet is not moved.
                bound = _bound_in(eps, v.dtype) if v.is_floating_point() else eps
                if -bound <= low and high <= bound:
                    return v
            return v.clamp(-eps, eps)
        delta = self.expand(v).flatten(1)
        size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
        scale = (eps / size.clamp_min(1e-12)).clamp(max=1.0)
        return v * scale.view(-1, *[1] * (v.dim() - 1))

    def restrict(self, delta: Tensor) -> Tensor:
        """The variable whose expansion is closest to ``delta`` ``(N, C, H, W)`` in L2: block
        means for tiles, the low-frequency coefficients for DCT (exact when ``delta`` lies in
        the subspace, e.g. a coarser tiling being refined)."""
        if self.spec == "full":
            return delta
        if self.spec.startswith("dct:"):
            rows = self._rows.to(delta.device, delta.dtype)
            cols = self._cols.to(delta.device, delta.dtype)
            return torch.einsum("kh,nchw,lw->nckl", rows, delta, cols)
        k = self.var_shape[1]
        h, w = self.image_shape[1:]
        if h % k == 0 and w % k == 0:
            return F.adaptive_avg_pool2d(delta, (k, k))
        # Nearest-neighbour blocks of unequal size: average each block by its own mask.
        idx = torch.arange(k * k, device=delta.device, dtype=delta.dtype).view(1, 1, k, k)
        owner = F.interpolate(idx, size=(h, w), mode="nearest").long().view(-1)
        flat = delta.flatten(2)
        sums = torch.zeros(*flat.shape[:2], k * k, device=delta.device, dtype=delta.dtype)
        sums.index_add_(2, owner, flat)
        counts = torch.bincount(owner, minlength=k * k).to(delta.dtype)
        return (sums / counts).view(*flat.shape[:2], k, k)


@functools.lru_cache(maxsize=32)
def _nearest_maps(k: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Source row ``(h,)`` and column ``(w,)`` of each output pixel of a nearest ``k x k`` ->
    ``h x w`` upsampling, read off ``F.interpolate`` itself (so it is its rounding)."""
    src = torch.arange(k, dtype=torch.float32)
    rows = F.interpolate(src.view(1, 1, k, 1), size=(h, 1), mode="nearest").view(h)
    cols = F.interpolate(src.view(1, 1, 1, k), size=(1, w), mode="nearest").view(w)
    return rows.long().to(device), cols.long().to(device)


@functools.lru_cache(maxsize=32)
def _bound_in(eps: float, dtype: torch.dtype) -> float:
    """``eps`` rounded to ``dtype`` (what a clamp to eps in that dtype compares against),
    computed once per pair: the attack loop asks every step."""
    return float(torch.tensor(eps, dtype=dtype))


class SubspaceSchedule:
    """Coarse-to-fine search: ``"tile:7>tile:14>full"`` switches subspace as the queries
    spent by the batch reach fractions of the budget (15% and 40% for three stages, 30% for
    two; BOOSTING.md measured 7->14->28 at 150/400 of 1,000). Explicit switch points:
    ``"tile:7@150>tile:14@400>full"`` (queries per image)."""

    def __init__(self, spec: str, image_shape: tuple[int, ...], budget: int) -> None:
        stages = [part.strip() for part in spec.split(">")]
        if any(not part for part in stages):
            raise ValueError(f"empty stage in subspace schedule {spec!r}")
        self.spaces: list[Subspace] = []
        self.switch_at: list[int] = []
        defaults = {1: [], 2: [0.3], 3: [0.15, 0.4]}.get(
            len(stages), [0.15 * 2**i for i in range(len(stages) - 1)]
        )
        for i, part in enumerate(stages):
            name, _, at = part.partition("@")
            self.spaces.append(Subspace(name, image_shape))
            if i < len(stages) - 1:
                if at:
                    try:
                        q = int(at)
                    except ValueError:
                        raise ValueError(
                            f"switch point must be a query count, got {part!r}"
                        ) from None
                else:
                    q = max(1, int(defaults[i] * budget))
                self.switch_at.append(q)
            elif at:
                raise ValueError(f"the last stage of {spec!r} takes no switch point")
        if self.switch_at != sorted(self.switch_at) or any(q < 1 for q in self.switch_at):
            raise ValueError(f"switch points of {spec!r} must not decrease and must be >= 1")

    def stage(self, spent: int) -> int:
        return sum(spent >= q for q in self.switch_at)
