"""Search subspaces: optimise a lower-dimensional variable that is expanded to image size.

``tile:K`` searches a ``(C, K, K)`` variable upsampled by nearest neighbour (each variable
coordinate moves a block of pixels), the dimension-reduction idea ZO-AE-DS and tiling
attacks rely on; ``full`` searches pixels directly.
"""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812
from torch import Tensor


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
        elif spec.startswith("tile:"):
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"subspace must be 'full' or 'tile:K', got {spec!r}") from None
            if not 1 <= k <= min(h, w):
                raise ValueError(f"tile size K must be in [1, {min(h, w)}], got {k}")
            self.var_shape = (c, k, k)
        else:
            raise ValueError(f"subspace must be 'full' or 'tile:K', got {spec!r}")

    @property
    def dim(self) -> int:
        n = 1
        for s in self.var_shape:
            n *= s
        return n

    def expand(self, v: Tensor) -> Tensor:
        if self.spec == "full":
            return v
        return F.interpolate(v, size=self.image_shape[1:], mode="nearest")
