"""The zoo: small victims that train on CPU in minutes and are fast enough to attack many times.

Both are built on the meta device and then initialised from an explicit ``torch.Generator``
(see :func:`~zoattack.models.layers.init_weights_`), so constructing one never reads or
advances torch's global RNG and the same seed gives the same weights on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoattack.models.layers import Normalize, init_weights_
from zoattack.seeding import make_generator

# Inside `skeleton()`, zoo models stay on the meta device: their shapes without their memory.
_SKELETON: ContextVar[bool] = ContextVar("zoattack_zoo_skeleton", default=False)


@contextmanager
def skeleton() -> Iterator[None]:
    """Build zoo models with parameters on the meta device (no memory, no initialisation):
    what :mod:`zoattack.models.fit` measures before the real model is allowed to exist."""
    token = _SKELETON.set(True)
    try:
        yield
    finally:
        _SKELETON.reset(token)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _stats(
    in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(mean) if mean is not None else (0.5,) * in_channels
    std = tuple(std) if std is not None else (0.5,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"mean/std need {in_channels} values (one per input channel), got "
            f"{len(mean)} and {len(std)}"
        )
    return mean, std


class ZooModel(nn.Module):
    """Common plumbing: the JSON-able constructor arguments that rebuild the model from a card."""

    arch: str = ""
    _config: dict[str, Any]

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _finish(self, generator: torch.Generator | None) -> None:
        if _SKELETON.get():
            return
        self.to_empty(device="cpu")
        init_weights_(self, generator if generator is not None else make_generator(None))


class _ShortcutA(nn.Module):
    """Option A of He et al. 2016: subsample by ``stride``, zero-pad new channels (no params)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or option A / 1x1-conv "B") shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _ShortcutA(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ZooModel):
    """CIFAR ResNet-(6n+2) (He et al., "Deep Residual Learning for Image Recognition", CVPR
    2016, §4.2), n = ``blocks`` basic blocks per stage.

    A 3x3 stem with 16 channels, then 3 stages of n basic blocks with 16, 32 and 64 channels
    (stride 2 at the start of stages 2 and 3), global average pooling and a linear classifier:
    6n+2 weighted layers (n = 3, 5, 7, 9: ResNet-20/32/44/56, ~0.27/0.46/0.66/0.85 M
    parameters). ``shortcut="A"`` is the paper's parameter-free option A (subsample +
    zero-pad channels); ``"B"`` uses 1x1 conv + BN projections. Inputs in [0, 1] are
    normalized by the first layer.

    Any input size works (global pooling): 1x28x28 Fashion-MNIST (28 -> 14 -> 7),
    3x32x32 CIFAR-10 (32 -> 16 -> 8), 1x8x8 digits (8 -> 4 -> 2).

    Shapes: ``(N, in_channels, H, W) -> (N, num_classes)`` logits.
    """

    blocks: int = 3

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shortcut: str = "A",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        shortcut = shortcut.upper()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}")
        if in_channels < 1 or num_classes < 2:
            raise ValueError(
                f"need in_channels >= 1 and num_classes >= 2, got {in_channels}, {num_classes}"
            )
        mean, std = _stats(in_channels, mean, std)
        self._config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "mean": list(mean),
            "std": list(std),
            "shortcut": shortcut,
        }
        with torch.device("meta"):
            self.normalize = Normalize(mean, std)
            self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            planes_in = 16
            stages = []
            for planes, stride in ((16, 1), (32, 2), (64, 2)):
                blocks = []
                for i in range(self.blocks):
                    blocks.append(BasicBlock(planes_in, planes, stride if i == 0 else 1, shortcut))
                    planes_in = planes
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = stages
            self.fc = nn.Linear(64, num_classes)
        self._finish(generator)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet20(CifarResNet):
    """CIFAR ResNet-20: 3 blocks per stage, ~0.27 M parameters (see :class:`CifarResNet`)."""

    arch = "resnet20"
    blocks = 3


class ResNet32(CifarResNet):
    """CIFAR ResNet-32: 5 blocks per stage, ~0.46 M parameters (see :class:`CifarResNet`)."""

    arch = "resnet32"
    blocks = 5


class ResNet44(CifarResNet):
    """CIFAR ResNet-44: 7 blocks per stage, ~0.66 M parameters (see :class:`CifarResNet`)."""

    arch = "resnet44"
    blocks = 7


class ResNet56(CifarResNet):
    """CIFAR ResNet-56: 9 blocks per stage, ~0.85 M parameters (see :class:`CifarResNet`)."""

    arch = "resnet56"
    blocks = 9


class SmallCNN(ZooModel):
    """A small CNN of the kind used in MNIST attack papers (e.g. Carlini & Wagner 2017's MNIST
    net, slimmed): conv3x3(32)-ReLU-maxpool, conv3x3(64)-ReLU-maxpool, fc(128)-ReLU, fc(classes).

    Fast (~5,000 img/s forward on 2 CPU cores at 28x28) so tests and demos can attack it many
    times. The first fc layer's width depends on the input size, hence ``input_size``
    (``(H, W)``, each divisible by 4 is cleanest; 28 -> 7x7, 32 -> 8x8, 8 -> 2x2 maps).

    Shapes: ``(N, in_channels, H, W) -> (N, num_classes)`` logits.
    """

    arch = "small_cnn"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        input_size: int | Sequence[int] = 28,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        hidden: int = 128,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        h, w = _pair(input_size)
        if h < 4 or w < 4:
            raise ValueError(f"small_cnn needs inputs of at least 4x4, got {h}x{w}")
        mean, std = _stats(in_channels, mean, std)
        self._config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "input_size": [h, w],
            "mean": list(mean),
            "std": list(std),
            "hidden": hidden,
        }
        with torch.device("meta"):
            self.normalize = Normalize(mean, std)
            self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), hidden)
            self.fc2 = nn.Linear(hidden, num_classes)
        self._finish(generator)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(self.normalize(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))
