"""Autoencoders whose decoder is folded into the black box (ZO-AE-DS, Zhang et al. ICLR 2022).

The encoder is trained by the defender; the decoder is pretrained, frozen, and then only ever
evaluated inside queries, so zeroth-order estimation runs over the latent (d_z numbers) instead
of the image (C*H*W numbers).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from zoattack.models.layers import init_weights_
from zoattack.seeding import make_generator

ARCHS = ("cifar", "small")


def default_ae_config(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """``cifar`` (the paper's ``cifar_encoder_192_24``, latent 192) for 3x32x32 inputs; the
    ``small`` conv+linear AE with a 128-d latent for everything else (6x compression of
    1x28x28: few enough coordinates for CGE, enough for the victim to keep its accuracy)."""
    if tuple(image_shape) == (3, 32, 32):
        return {"arch": "cifar", "image_shape": list(image_shape), "latent": 192}
    return {"arch": "small", "image_shape": list(image_shape), "latent": 128}


def check_ae_shape(arch: str, image_shape: tuple[int, int, int], latent: int) -> None:
    """Raise one clear ``ValueError`` when ``arch`` cannot map ``image_shape`` to ``latent``."""
    c, h, w = image_shape
    if arch not in ARCHS:
        raise ValueError(f"autoencoder arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if latent < 1:
        raise ValueError(f"latent size must be >= 1, got {latent}")
    if arch == "cifar" and (h, w) != (32, 32):
        raise ValueError(
            f"the cifar autoencoder needs 32x32 images, got {c}x{h}x{w}; use arch 'small'"
        )
    if arch == "small" and (h % 4 or w % 4 or h < 4 or w < 4):
        raise ValueError(f"the small autoencoder needs H and W divisible by 4, got {c}x{h}x{w}")
    if latent >= c * h * w:
        raise ValueError(
            f"latent size {latent} is not smaller than the image ({c}x{h}x{w} = "
            f"{c * h * w}); pick --latent below {c * h * w}"
        )


def _init(module: nn.Module, generator: torch.Generator) -> None:
    init_weights_(module, generator)
    # init_weights_ knows Conv2d/Linear; transposed convs get the same He-normal draw here.
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            fan = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def _configure(
    net: nn.Module, image_shape: tuple[int, int, int], latent: int, arch: str
) -> tuple[int, int, int]:
    """Check and record the shapes an encoder or decoder is built for."""
    shape = tuple(int(v) for v in image_shape)
    check_ae_shape(arch, shape, latent)  # type: ignore[arg-type]
    # Plain attributes on an nn.Module (mypy reads every attribute as a submodule or tensor).
    setattr(net, "image_shape", shape)  # noqa: B010
    setattr(net, "latent", int(latent))  # noqa: B010
    setattr(net, "arch", arch)  # noqa: B010
    return shape  # type: ignore[return-value]


class Encoder(nn.Module):
    """Image -> latent.

    ``cifar`` (paper §2.2 of DEFENSE.md, 3x32x32): conv 3->24 (k4 s4), 24->48 (k3 s3 p2),
    48->96 (k4 s2 p1), 96->d_z (k2 s2), ReLU after each, so the latent is >= 0 as in the paper.
    ``small`` (H, W divisible by 4): conv C->16 (k4 s2 p1), ReLU, 16->32 (k4 s2 p1), ReLU,
    linear to d_z. No final ReLU: a coordinate clamped at 0 passes no gradient to the encoder,
    so every CGE query spent on it would be wasted.

    Shapes: ``(N, C, H, W) -> (N, d_z)``. No queries (white-box).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent: int,
        *,
        arch: str = "small",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        c, h, w = _configure(self, image_shape, latent, arch)
        with torch.device("meta"):
            if arch == "cifar":
                self.net = nn.Sequential(
                    nn.Conv2d(c, 24, 4, 4),
                    nn.ReLU(),
                    nn.Conv2d(24, 48, 3, 3, 2),
                    nn.ReLU(),
                    nn.Conv2d(48, 96, 4, 2, 1),
                    nn.ReLU(),
                    nn.Conv2d(96, latent, 2, 2),
                    nn.ReLU(),
                    nn.Flatten(),
                )
            else:
                self.net = nn.Sequential(
                    nn.Conv2d(c, 16, 4, 2, 1),
                    nn.ReLU(),
                    nn.Conv2d(16, 32, 4, 2, 1),
                    nn.ReLU(),
                    nn.Flatten(),
                    nn.Linear(32 * (h // 4) * (w // 4), latent),
                )
        self.to_empty(device="cpu")
        _init(self, generator if generator is not None else make_generator(None))

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"encoder expects images shaped {self.image_shape}, got {tuple(x.shape[1:])}"
            )
        return self.net(x)


class Decoder(nn.Module):
    """Latent -> image in [0, 1] (final Sigmoid); mirror of :class:`Encoder`.

    Shapes: ``(N, d_z) -> (N, C, H, W)``. Frozen after pretraining; in ZO-AE-DS it is part of
    the queried function, so each evaluation is charged as one black-box query by the caller.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent: int,
        *,
        arch: str = "small",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        c, h, w = _configure(self, image_shape, latent, arch)
        with torch.device("meta"):
            if arch == "cifar":
                self.net = nn.Sequential(
                    nn.Unflatten(1, (latent, 1, 1)),
                    nn.ConvTranspose2d(latent, 96, 2, 2),
                    nn.ReLU(),
                    nn.ConvTranspose2d(96, 48, 4, 2, 1),
                    nn.ReLU(),
                    nn.ConvTranspose2d(48, 24, 3, 3, 2),
                    nn.ReLU(),
                    nn.ConvTranspose2d(24, c, 4, 4),
                    nn.Sigmoid(),
                )
            else:
                self.net = nn.Sequential(
                    nn.Linear(latent, 32 * (h // 4) * (w // 4)),
                    nn.ReLU(),
                    nn.Unflatten(1, (32, h // 4, w // 4)),
                    nn.ConvTranspose2d(32, 16, 4, 2, 1),
                    nn.ReLU(),
                    nn.ConvTranspose2d(16, c, 4, 2, 1),
                    nn.Sigmoid(),
                )
        self.to_empty(device="cpu")
        _init(self, generator if generator is not None else make_generator(None))

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent:
            raise ValueError(
                f"decoder expects latents shaped (N, {self.latent}), got {tuple(z.shape)}"
            )
        return self.net(z)


def make_autoencoder(
    image_shape: tuple[int, int, int],
    *,
    latent: int | None = None,
    arch: str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Encoder, Decoder, dict[str, Any]]:
    """Encoder, decoder and the JSON config that rebuilds them (defaults per image shape)."""
    cfg = default_ae_config(image_shape)
    if arch is not None:
        cfg["arch"] = arch
    if latent is not None:
        cfg["latent"] = int(latent)
    gen = generator if generator is not None else make_generator(None)
    enc = Encoder(image_shape, cfg["latent"], arch=cfg["arch"], generator=gen)
    dec = Decoder(image_shape, cfg["latent"], arch=cfg["arch"], generator=gen)
    return enc, dec, cfg
