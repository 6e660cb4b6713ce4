"""DnCNN denoiser (Zhang et al. 2017), as used by denoised smoothing and ZO-AE-DS."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zoattack.seeding import make_generator


def default_denoiser_config(image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Paper size (17 layers, 64 channels) for CIFAR-sized and larger inputs; a light 5x16
    net for small inputs, because certification runs it N0+N = 10,100 times per image on CPU
    and the 17x64 net is ~25x slower than the whole 28x28 victim."""
    c, h, w = image_shape
    if h * w <= 28 * 28:
        return {"channels": c, "depth": 5, "width": 16}
    return {"channels": c, "depth": 17, "width": 64}


class DnCNN(nn.Module):
    """DnCNN residual denoiser (Zhang et al., "Beyond a Gaussian Denoiser", TIP 2017; the
    denoiser of Salman et al. 2020 and Zhang et al. ICLR 2022).

    Layers: conv3x3(C->W)+ReLU, ``depth-2`` x [conv3x3(W->W, no bias) + BN(eps 1e-4) + ReLU],
    conv3x3(W->C, no bias). Output ``x - net(x)`` (the net predicts the noise), not clamped.
    Init: orthogonal conv weights (from ``generator``), zero biases, BN weight 1 / bias 0, and the
    last conv zero, so a fresh denoiser is exactly the identity map.

    BN momentum is PyTorch's default 0.1 rather than the authors' 0.95 (which makes the running
    statistics those of the last batch alone); BN affects no checkpoint key, only the averages.

    Defaults: ``depth=17``, ``width=64`` (paper); see :func:`default_denoiser_config` for 28x28.
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``. No queries (white-box).
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        depth: int = 17,
        width: int = 64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be >= 2 layers, got {depth}")
        if width < 1 or channels < 1:
            raise ValueError(f"DnCNN needs channels >= 1 and width >= 1, got {channels}, {width}")
        self._config = {"channels": channels, "depth": depth, "width": width}
        # Built on the meta device so construction never draws from the global RNG.
        with torch.device("meta"):
            layers: list[nn.Module] = [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
            for _ in range(depth - 2):
                layers += [
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width, eps=1e-4),
                    nn.ReLU(inplace=True),
                ]
            layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
            self.net = nn.Sequential(*layers)
        self.to_empty(device="cpu")
        self.reset_parameters(generator if generator is not None else make_generator(None))

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        for m in convs:
            w = m.weight.reshape(m.weight.shape[0], -1)
            # Orthogonal init drawn from our generator (nn.init.orthogonal_ reads the global RNG).
            a = torch.randn(max(w.shape), min(w.shape), generator=generator)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
            q = q if w.shape[0] >= w.shape[1] else q.T
            m.weight.copy_(q[: w.shape[0], : w.shape[1]].reshape(m.weight.shape))
            if m.bias is not None:
                m.bias.zero_()
        convs[-1].weight.zero_()
        for layer in self.net:
            if isinstance(layer, nn.BatchNorm2d):
                layer.reset_running_stats()
                layer.weight.fill_(1.0)
                layer.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x - self.net(x)
