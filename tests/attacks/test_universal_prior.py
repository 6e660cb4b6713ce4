"""`--prior` with `--universal`: the universal objective's surrogate gradient is autograd of the
same objective on the surrogate (less what points out of the ball at its boundary), it never
reaches the black box, and the victim's ledger stays exact while the prior estimator runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoattack import BlackBox, create_optimizer, make_generator
from zoattack.attacks.universal import UniversalObjective, run_universal
from zoattack.losses import attack_loss
from zoattack.norms import project
from zoattack.subspace import Subspace


class Counting(nn.Module):
    """Counts the rows it scores (forward passes through the wrapped model)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.net(x)


def linear(w0: float, w1: float, b: float) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.full((16,), w0), torch.full((16,), w1)]))
        model[1].bias.copy_(torch.tensor([b, -b]))
    return model.eval()


@pytest.fixture(scope="module")
def data():
    # Every image is pushed to class 1 by the same +eps perturbation (as test_universal).
    victim = linear(-1.0, 1.0, 1.2)
    x = 0.5 * torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = victim(x).argmax(1)
    return victim, x, y


@pytest.mark.parametrize("norm, eps, space", [("linf", 0.3, "full"), ("l2", 1.0, "tile:2")])
def test_surrogate_gradient_is_autograd_of_the_same_objective(data, norm, eps, space):
    victim, x, y = data
    gen = torch.Generator().manual_seed(1)
    sur = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()  # a different model
    sp = Subspace(space, (1, 4, 4))
    bb = BlackBox(victim)
    obj = UniversalObjective(bb, x, y, norm=norm, eps=eps, subspace=sp, kappa=0.5, surrogate=sur)
    # off the ball's boundary (strictly inside or outside, where autograd through the
    # projection has no outward part), so the feasibility step of the prior changes nothing
    pts = 0.4 * torch.randn(3, *sp.var_shape, generator=gen)
    got = obj.surrogate_gradient(pts, torch.zeros(3, dtype=torch.long))
    # the same objective written out directly, on the surrogate's scores
    var = pts.clone().requires_grad_(True)
    delta = project(sp.expand(var), norm, eps)
    imgs = (x.unsqueeze(0) + delta.unsqueeze(1)).clamp(0, 1).reshape(-1, 1, 4, 4)
    loss = attack_loss(sur(imgs), y.repeat(3), kind="margin").view(3, -1)
    want = torch.autograd.grad(loss.clamp_min(-0.5).mean(1).sum(), var)[0]
    assert got.shape == pts.shape
    torch.testing.assert_close(got, want)
    # local: no query, no evaluation, no best-candidate bookkeeping
    assert bb.total_queries == 0 and obj.evaluations == 0 and obj.best_key[0] == -1


def test_victim_as_its_own_prior_gives_the_objectives_gradient(data):
    victim, x, y = data
    obj = UniversalObjective(
        BlackBox(victim),
        x,
        y,
        norm="linf",
        eps=0.3,
        subspace=Subspace("full", (1, 4, 4)),
        surrogate=victim,
    )
    pts = torch.zeros(1, 1, 4, 4)
    g = obj.surrogate_gradient(pts, torch.zeros(1, dtype=torch.long))
    # margin = z_y - max_other: for class-0 images d/dx = w0 - w1 = -2 per pixel, so the
    # objective (mean margin) falls along +delta for every image at once
    n0 = int((y == 0).sum())
    expected = (-2.0 * n0 + 2.0 * (len(y) - n0)) / len(y)
    torch.testing.assert_close(g, torch.full_like(g, expected))


def test_universal_with_prior_exact_ledger_and_surrogate_never_charged(data):
    victim, x, y = data
    net, sur = Counting(victim).eval(), Counting(linear(-0.8, 1.1, 1.0))  # a related model
    bb = BlackBox(net, budget=60)
    rule = create_optimizer("zo_signsgd", lr=0.1, estimator="prior", num_samples=4, mu=0.05)
    res = run_universal(
        bb,
        x,
        y,
        rule,
        generator=make_generator(0),
        norm="linf",
        eps=0.3,
        budget=60,
        surrogate=sur,
    )
    assert sur.rows > 0  # the prior ran...
    assert net.rows == bb.total_queries == int(res.queries.sum())  # ...and was never charged
    assert int(res.queries.max()) <= 60
    attacked = res.clean_correct
    assert bool((res.queries[attacked] == res.evaluations + 1).all())
    assert res.fooling_rate is not None and res.fooling_rate > 0.9
    assert rule.estimator.last_lambda is not None  # type: ignore[union-attr]


def test_universal_prior_is_deterministic_and_needs_a_surrogate(data):
    victim, x, y = data

    def go(seed: int, surrogate: nn.Module | None):
        rule = create_optimizer("zo_adamm", lr=0.05, estimator="prior", num_samples=3, mu=0.05)
        return run_universal(
            BlackBox(victim),
            x,
            y,
            rule,
            generator=make_generator(seed),
            norm="l2",
            eps=1.0,
            budget=30,
            surrogate=surrogate,
        )

    sur = linear(-0.5, 1.0, 0.7)
    a, b = go(3, sur), go(3, sur)
    assert torch.equal(a.delta, b.delta) and torch.equal(a.queries, b.queries)
    with pytest.raises(ValueError, match="surrogate"):
        go(3, None)


def test_on_the_boundary_the_prior_keeps_only_feasible_directions(data):
    victim, x, y = data
    sur = linear(-0.5, 1.0, 0.7)
    obj = UniversalObjective(
        BlackBox(victim),
        x,
        y,
        norm="l2",
        eps=1.0,
        subspace=Subspace("full", (1, 4, 4)),
        surrogate=sur,
    )
    ids = torch.zeros(1, dtype=torch.long)
    cut = 0
    for sign in (1.0, -1.0):
        on = torch.full((1, 1, 4, 4), 0.25 * sign)  # ||delta|| = 1 = eps: on the sphere
        g_in = obj.surrogate_gradient(0.999 * on, ids)  # just inside: the raw gradient
        g_on = obj.surrogate_gradient(on, ids)
        if float((g_in * on).sum()) < 0:
            # the descent direction points out, which the projection would undo: only the
            # tangent part is left
            assert float((g_on * on).sum()) == pytest.approx(0.0, abs=1e-6)
            torch.testing.assert_close(g_on, g_in - (g_in * on).sum() * on, atol=1e-5, rtol=0)
            cut += 1
        else:  # pointing inward: untouched
            torch.testing.assert_close(g_on, g_in, atol=1e-5, rtol=0)
    assert cut == 1
