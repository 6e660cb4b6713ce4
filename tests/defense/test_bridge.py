"""The autograd bridge against autograd on a differentiable stand-in black box."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoattack.blackbox import BlackBox
from zoattack.defense.autoencoder import make_autoencoder
from zoattack.defense.bridge import PseudoLabelCE, zo_loss
from zoattack.errors import ZOAttackError
from zoattack.estimators import create_estimator
from zoattack.seeding import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(output="logits"):
    gen = make_generator(0)
    enc, dec, _ = make_autoencoder((1, 8, 8), latent=6, generator=gen)
    dec.requires_grad_(False)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in clf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.rand(5, 1, 8, 8, generator=gen)
    y = torch.tensor([0, 1, 2, 1, 0])
    clf.eval()
    bb = BlackBox(clf, output=output, input_shape=(1, 8, 8))
    return enc, dec, clf, x, y, bb


def _cos(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize(
    "name, kwargs, threshold",
    [
        ("coordinate", {"difference": "central", "mu": 1e-3}, 0.999),
        ("coordinate", {"mu": 1e-3}, 0.99),
        ("sphere", {"num_samples": 400, "mu": 1e-3}, 0.8),
    ],
)
def test_bridge_gradient_matches_autograd(name, kwargs, threshold):
    enc, dec, clf, x, y, bb = _setup()
    # Reference: exact backprop through decoder and classifier.
    z = enc(x)
    ref_loss = F.cross_entropy(clf(dec(z)), y, reduction="none")
    ref = torch.autograd.grad(ref_loss.mean(), list(enc.parameters()))
    # Bridge: the same graph up to z, queries beyond it.
    est = create_estimator(name, **kwargs)
    obj = PseudoLabelCE(bb, y, post=dec)
    z = enc(x)
    loss, queries = zo_loss(z, obj, est, generator=make_generator(1), idx=torch.arange(5))
    assert torch.allclose(loss, ref_loss.detach(), atol=1e-5)
    got = torch.autograd.grad(loss.mean(), list(enc.parameters()))
    flat_ref = torch.cat([g.flatten() for g in ref])
    flat_got = torch.cat([g.flatten() for g in got])
    assert _cos(flat_got, flat_ref) > threshold
    # Query accounting: the bridge's count is the ledger's, charged to each example.
    assert torch.equal(queries, bb.queries)
    expected = 1 + est.queries_per_call(6) - (1 if est.difference == "forward" else 0)
    assert queries.tolist() == [expected] * 5


def test_probs_black_box_gives_the_same_loss():
    enc, dec, clf, x, y, _ = _setup()
    bb = BlackBox(clf, output="probs", input_shape=(1, 8, 8))
    z = enc(x).detach()
    obj = PseudoLabelCE(bb, y, post=dec)
    ref = F.cross_entropy(clf(dec(z)), y, reduction="none")
    assert torch.allclose(obj(z, torch.arange(5)), ref, atol=1e-5)


def test_labels_only_black_box_is_refused_for_training():
    *_, y, bb = _setup(output="labels")
    with pytest.raises(ZOAttackError, match="training needs a black box that returns scores"):
        PseudoLabelCE(bb, y)
