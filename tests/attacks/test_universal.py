"""Universal perturbations: one delta for many images, counted per image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoattack import BlackBox, create_optimizer, make_generator
from zoattack.attacks.universal import run_universal


@pytest.fixture(scope="module")
def victim():
    # A linear 2-class model on 1x4x4 images with a shared weakness: every image is pushed
    # to class 1 by the same +eps perturbation, so a universal delta exists.
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.full((16,), -1.0), torch.full((16,), 1.0)]))
        model[1].bias.copy_(torch.tensor([1.2, -1.2]))
    x = 0.5 * torch.rand(30, 1, 4, 4, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y


def test_universal_attack_fools_the_set_within_budget(victim):
    model, x, y = victim
    bb = BlackBox(model, budget=60)
    # coordinate differences give exact signs in 16 dims: two sign steps reach the vertex
    rule = create_optimizer("zo_signsgd", lr=0.15, estimator="coordinate")
    res = run_universal(
        bb, x, y, rule, generator=make_generator(0), norm="linf", eps=0.3, budget=60
    )
    assert res.fooling_rate is not None and res.fooling_rate > 0.9
    assert res.linf <= 0.3 + 1e-6
    assert int(res.queries.max()) <= 60
    # every image is charged for every evaluation (plus its clean check)
    attacked = res.clean_correct
    assert bool((res.queries[attacked] == res.evaluations + 1).all())
    with torch.no_grad():
        pred = model((x + res.delta).clamp(0, 1)).argmax(1)
    assert torch.equal(pred != y, res.fooled)


def test_universal_respects_l2_and_is_deterministic(victim):
    model, x, y = victim
    out = []
    for seed in (1, 1, 2):
        res = run_universal(
            BlackBox(model),
            x,
            y,
            create_optimizer("lizo", lr=0.05),
            generator=make_generator(seed),
            norm="l2",
            eps=1.0,
            budget=40,
        )
        assert res.l2 <= 1.0 + 1e-5
        out.append(res.delta)
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2])


def test_universal_bad_settings(victim):
    model, x, y = victim
    with pytest.raises(ValueError, match="budget"):
        run_universal(
            BlackBox(model),
            x,
            y,
            create_optimizer("zo_sgd", lr=0.1),
            generator=make_generator(0),
            norm="linf",
            eps=0.1,
            budget=2,
        )
    with pytest.raises(ValueError, match="misclassifies every image"):
        run_universal(
            BlackBox(model),
            x,
            1 - y,
            create_optimizer("zo_sgd", lr=0.1),
            generator=make_generator(0),
            norm="linf",
            eps=0.1,
            budget=20,
        )
