"""Denoiser and autoencoder: identity at init, shapes, seeded init, shape errors."""

from __future__ import annotations

import pytest
import torch

from zoattack.defense.autoencoder import Decoder, Encoder, make_autoencoder
from zoattack.defense.denoiser import DnCNN, default_denoiser_config
from zoattack.seeding import make_generator


@pytest.mark.parametrize("shape, depth, width", [((1, 28, 28), 5, 16), ((3, 32, 32), 17, 64)])
def test_fresh_denoiser_is_the_identity(shape, depth, width):
    den = DnCNN(shape[0], depth=depth, width=width, generator=make_generator(0))
    x = torch.rand(2, *shape, generator=make_generator(1)) * 1.6 - 0.3  # noisy: outside [0,1]
    den.train()
    assert torch.equal(den(x), x)
    den.eval()
    assert torch.equal(den(x), x)
    # The identity comes from the zero last layer only; the rest is a real random init.
    assert den.net[0].weight.abs().sum() > 0


def test_denoiser_init_is_seeded_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a = DnCNN(1, depth=4, width=8, generator=make_generator(3)).state_dict()
    b = DnCNN(1, depth=4, width=8, generator=make_generator(3)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = DnCNN(1, depth=4, width=8, generator=make_generator(4)).state_dict()
    assert not torch.equal(a["net.0.weight"], c["net.0.weight"])


def test_default_configs():
    assert default_denoiser_config((1, 28, 28)) == {"channels": 1, "depth": 5, "width": 16}
    assert default_denoiser_config((3, 32, 32))["depth"] == 17
    enc, dec, cfg = make_autoencoder((3, 32, 32), generator=make_generator(0))
    assert cfg["latent"] == 192 and cfg["arch"] == "cifar"
    x = torch.rand(2, 3, 32, 32)
    z = enc(x)
    assert z.shape == (2, 192) and bool((z >= 0).all())  # the paper's final ReLU
    assert dec(z).shape == x.shape
    enc, dec, cfg = make_autoencoder((1, 28, 28), latent=32, generator=make_generator(0))
    y = dec(enc(torch.rand(3, 1, 28, 28))).detach()
    assert y.shape == (3, 1, 28, 28) and float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize(
    "shape, latent, arch, needle",
    [
        ((1, 28, 28), 784, "small", "not smaller than the image"),
        ((1, 30, 30), 16, "small", "divisible by 4"),
        ((1, 28, 28), 16, "cifar", "32x32"),
        ((1, 28, 28), 0, "small", "latent size must be >= 1"),
    ],
)
def test_latent_image_shape_mismatch_is_one_clear_error(shape, latent, arch, needle):
    with pytest.raises(ValueError, match=needle):
        Encoder(shape, latent, arch=arch)


def test_decoder_rejects_wrong_latent():
    dec = Decoder((1, 8, 8), 6, generator=make_generator(0))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        dec(torch.zeros(2, 7))
