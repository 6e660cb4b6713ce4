"""Building blocks shared by the zoo and the adapters.

Attacks perturb pixels in [0, 1] and measure budgets (``eps``) there, so every model zoattack
builds takes [0, 1] inputs and normalizes inside itself: a :class:`Normalize` first layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer so the model's input space is [0, 1].

    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of
    state dicts, so checkpoints from plain (unwrapped) networks load unchanged; model cards
    record them instead.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)`` with ``C == len(mean)``.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(
                f"mean and std need one value per channel, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean_values = tuple(float(m) for m in mean)
        self.std_values = tuple(float(s) for s in std)
        self.register_buffer("mean", torch.empty(len(mean), 1, 1), persistent=False)
        self.register_buffer("std", torch.empty(len(std), 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Refill the buffers (needed after ``to_empty`` when built on the meta device)."""
        with torch.no_grad():
            self.mean.copy_(torch.tensor(self.mean_values).view(-1, 1, 1))
            self.std.copy_(torch.tensor(self.std_values).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean_values}, std={self.std_values}"


class NormalizedModel(nn.Module):
    """A third-party network behind :class:`Normalize` (and a channel repeat for gray inputs).

    ``repeat_channels`` lets a 3-channel torchvision/timm network score 1-channel images by
    repeating the channel; the state dict of ``model`` is untouched (keys prefixed ``model.``).

    Shapes: ``(N, C_in, H, W) -> model's output``.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        repeat_channels: int = 1,
    ) -> None:
        super().__init__()
        self.repeat_channels = int(repeat_channels)
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat_channels > 1:
            x = x.repeat(1, self.repeat_channels, 1, 1)
        return self.model(self.normalize(x))


def init_weights_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """(Re)initialise every parameter and buffer from ``generator``; global RNG untouched.

    Conv: He normal (fan-out, ReLU), as He et al. 2015/2016; Linear: PyTorch's default
    (uniform, bound 1/sqrt(fan_in)); BatchNorm: weight 1, bias 0, fresh running statistics.
    Works on freshly ``to_empty``-ed modules, which is how zoo models are built.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(
                m.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, Normalize):
            m.reset_parameters()
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
