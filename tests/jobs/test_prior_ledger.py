"""The transfer prior inside the attack loop: the surrogate's forward passes never reach the
victim's black box, and the victim ledger equals the rows the victim scored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoattack import BlackBox, make_generator
from zoattack.attacks.base import run_attack
from zoattack.optim import create_optimizer


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def test_surrogate_is_never_charged_and_the_victim_ledger_is_exact(digits_victim):
    model, x, y = digits_victim
    victim, surrogate = Counting(model).eval(), Counting(model).eval()
    bb = BlackBox(victim, output="logits", budget=200, input_shape=tuple(x.shape[1:]))
    rule = create_optimizer("zo_adamm", lr=0.05, estimator="prior", mu=0.05)
    res = run_attack(
        bb,
        x[:10],
        y[:10],
        rule,
        generator=make_generator(0),
        norm="linf",
        eps=0.1,
        budget=200,
        surrogate=surrogate,
    )
    assert surrogate.rows > 0  # the prior was used ...
    assert victim.rows == bb.total_queries == int(res.queries.sum())  # ... and never charged
    assert bool((res.queries <= 200).all())
    # Same model as prior: the prior is the true gradient, so it should win quickly.
    assert float(res.success[res.clean_correct].float().mean()) >= 0.5


def test_without_surrogate_the_prior_estimator_refuses(digits_victim):
    model, x, y = digits_victim
    bb = BlackBox(model, output="logits", budget=50, input_shape=tuple(x.shape[1:]))
    rule = create_optimizer("zo_adamm", lr=0.05, estimator="prior", mu=0.05)
    with pytest.raises(ValueError, match="surrogate"):
        run_attack(
            bb, x[:2], y[:2], rule, generator=make_generator(0), norm="linf", eps=0.1, budget=50
        )


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.5)])
def test_prior_keeps_the_rules_tuned_tricks_and_takes_the_sphere_radius(norm, eps):
    """The prior probes unit directions as `sphere` does: it takes the radius and difference
    tuned for sphere under the norm (the rule's own where its tuned estimator is sphere)."""
    from zoattack.jobs.attack import PRIOR_REF, AttackSpec
    from zoattack.optim import OPTIMIZERS

    for rule in ("zo_sgd", "zo_signsgd", "zo_adamm", "radazo", "lizo"):
        spec = AttackSpec(optimizer=rule, norm=norm, eps=eps, prior="small_cnn").resolved()
        tuned = OPTIMIZERS.get(rule).tuned(norm)
        ref = tuned if tuned.estimator == "sphere" else OPTIMIZERS.get(PRIOR_REF).tuned(norm)
        assert ref.estimator == "sphere"
        assert spec.estimator == "prior"
        assert spec.momentum == tuned.momentum and spec.subspace == tuned.subspace
        assert spec.mu == (None if ref.mu is None else pytest.approx(ref.mu * eps))
        assert spec.difference == ref.difference
        est = spec.make_rule().estimator
        sphere = AttackSpec(optimizer=PRIOR_REF, norm=norm, eps=eps, estimator="sphere").resolved()
        if rule == PRIOR_REF:  # the very radius and difference the sphere runs with
            assert sphere.make_rule().estimator is not None and est is not None
            assert (est.mu, est.difference) == (
                sphere.make_rule().estimator.mu,
                sphere.make_rule().estimator.difference,
            )


def test_explicit_estimator_wins_over_prior():
    from zoattack.jobs.attack import AttackSpec

    assert (
        AttackSpec(optimizer="zo_adamm", prior="small_cnn", estimator="sphere").resolved().estimator
        == "sphere"
    )
