"""zoattack.losses: the attacker's losses (lower is better) and the success test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from zoattack.losses import LOSSES, attack_loss, is_adversarial

F64 = torch.float64
FAST = settings(max_examples=60, deadline=None)


def _scores(seed: int, m: int = 16, c: int = 10, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(m, c, generator=g)


def _labels(seed: int, m: int = 16, c: int = 10) -> torch.Tensor:
    return torch.randint(0, c, (m,), generator=torch.Generator().manual_seed(seed))


def test_margin_by_hand():
    z = torch.tensor([[2.0, 5.0, 1.0], [4.0, 0.5, 3.0]])
    y = torch.tensor([1, 2])
    # Untargeted: z_y - max_{j != y} z_j.
    assert attack_loss(z, y).tolist() == [5.0 - 2.0, 3.0 - 4.0]
    # Targeted (t = 0 for both): max_{j != t} z_j - z_t.
    t = torch.tensor([0, 0])
    assert attack_loss(z, y, target=t).tolist() == [5.0 - 2.0, 3.0 - 4.0]


def test_ce_matches_cross_entropy():
    z, y, t = _scores(1), _labels(2), _labels(3)
    ce_y = F.cross_entropy(z.double(), y, reduction="none")
    ce_t = F.cross_entropy(z.double(), t, reduction="none")
    # Untargeted: -CE(z, y) (the attacker lowers the true class's log-probability).
    torch.testing.assert_close(attack_loss(z, y, kind="ce"), -ce_y)
    # Targeted: CE(z, t).
    torch.testing.assert_close(attack_loss(z, y, kind="ce", target=t), ce_t)


@FAST
@given(seed=st.integers(0, 2**31 - 1), classes=st.integers(2, 12))
def test_margin_sign_is_success(seed, classes):
    # Continuous random scores have no ties: the margin is negative exactly when the attack
    # has succeeded on that input, for both the untargeted and the targeted goal.
    z, y, t = _scores(seed, c=classes), _labels(seed + 1, c=classes), _labels(seed + 2, c=classes)
    pred = z.argmax(1)
    assert torch.equal(attack_loss(z, y) < 0, is_adversarial(pred, y))
    assert torch.equal(attack_loss(z, y, target=t) < 0, is_adversarial(pred, y, t))


@FAST
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(LOSSES), targeted=st.booleans())
def test_losses_ignore_a_per_input_shift_of_the_logits(seed, kind, targeted):
    z, y = _scores(seed).double(), _labels(seed + 1)
    t = _labels(seed + 2) if targeted else None
    shift = 100.0 * torch.randn(
        z.shape[0], 1, generator=torch.Generator().manual_seed(seed), dtype=F64
    )
    torch.testing.assert_close(
        attack_loss(z + shift, y, kind=kind, target=t), attack_loss(z, y, kind=kind, target=t)
    )


def test_margin_on_log_probabilities_equals_margin_on_logits():
    # Black boxes returning probabilities are scored as log p: same margin as the logits.
    z, y, t = _scores(4), _labels(5), _labels(6)
    logp = torch.log_softmax(z.double(), dim=1)
    torch.testing.assert_close(attack_loss(logp, y), attack_loss(z, y))
    torch.testing.assert_close(attack_loss(logp, y, target=t), attack_loss(z, y, target=t))


def test_losses_are_float64_one_per_input_and_leave_scores_alone():
    z, y = _scores(7, m=5).half(), _labels(8, m=5)
    before = z.clone()
    for kind in LOSSES:
        loss = attack_loss(z, y, kind=kind)
        assert loss.shape == (5,) and loss.dtype == F64
        assert torch.isfinite(loss).all()
    assert torch.equal(z, before)


def test_two_classes_targeted_and_untargeted_margins_agree():
    # With two classes the other class is the target: both goals are the same inequality.
    z, y = _scores(9, c=2), _labels(10, c=2)
    torch.testing.assert_close(attack_loss(z, y), attack_loss(z, y, target=1 - y))


def test_ce_is_finite_for_extreme_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    y = torch.tensor([0, 0])
    loss = attack_loss(z, y, kind="ce")
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-12)  # log p_y = 0 when certain
    assert loss[1].item() == pytest.approx(-2e4, rel=1e-9)


def test_unknown_loss_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="margin, ce"):
        attack_loss(_scores(0), _labels(0), kind="hinge")


def test_is_adversarial():
    pred = torch.tensor([0, 1, 2, 3])
    label = torch.tensor([0, 2, 2, 1])
    assert is_adversarial(pred, label).tolist() == [False, True, False, True]
    target = torch.tensor([0, 1, 0, 0])
    # Targeted success means landing on the target, not merely leaving the label.
    assert is_adversarial(pred, label, target).tolist() == [True, True, False, False]
