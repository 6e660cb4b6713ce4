"""Surrogate ensembles (issue 25): the ensemble's gradient and counts, the API's
``surrogates=``, refusals before any victim query, white-box labelling, and the prior."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zoattack
from zoattack.attacks.surrogates import SurrogateEnsemble, check_surrogate
from zoattack.errors import InvalidInputError
from zoattack.losses import attack_loss


class Net(nn.Module):
    """A tiny conv net on 1x8x8 images (classes outputs)."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Counted(nn.Module):
    """A victim that counts every input it scores (what the ledger must agree with)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def perturbed(model: nn.Module, scale: float = 0.02, seed: int = 1) -> nn.Module:
    """A copy of ``model`` with slightly perturbed weights (an easy surrogate)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other


@pytest.fixture
def case() -> tuple[Net, torch.Tensor, torch.Tensor]:
    victim = Net()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = victim(x).argmax(dim=1)  # every image initially correct
    return victim, x, y


def test_ensemble_gradient_is_the_mean_of_member_gradients_and_counted() -> None:
    a, b = Net(seed=1), Net(seed=2)
    ens = SurrogateEnsemble([a, b], ["a", "b"])
    x = torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 1, 2])
    loss, grad = ens.loss_grad(x, y)
    parts = []
    for m in (a, b):
        v = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(attack_loss(m(v), y).sum(), v)
        parts.append(g)
    torch.testing.assert_close(grad, (parts[0] + parts[1]) / 2)
    assert loss.shape == (3,)
    assert ens.counts() == {"surrogate_forwards": 0, "surrogate_grads": 6}
    ens.loss(x, y)
    assert ens.counts()["surrogate_forwards"] == 6


def test_check_surrogate_refuses_other_classes_and_other_inputs() -> None:
    with pytest.raises(InvalidInputError, match="classes"):
        check_surrogate(Net(classes=3), "s", (1, 8, 8), 4, torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="does not take"):
        check_surrogate(Net(), "s", (3, 8, 8), 4, torch.device("cpu"))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (Net(classes=3), "classes"),
        ("no_such_model", "dataset="),
        (42, "names or nn.Modules"),
    ],
)
def test_api_refuses_bad_surrogates_before_any_victim_query(case, bad, words) -> None:
    victim, x, y = case
    counted = Counted(victim)
    with pytest.raises(InvalidInputError, match=words):
        zoattack.attack(counted, x, y, attack="zo", surrogates=[bad], num_classes=4, budget=20)
    assert counted.rows == 0


def test_search_rules_refuse_surrogates(case) -> None:
    victim, x, y = case
    with pytest.raises(InvalidInputError, match="uses no surrogate"):
        zoattack.attack(victim, x, y, attack="square", surrogates=[Net()], budget=20)


def test_prior_takes_the_ensemble_and_passes_are_not_victim_queries(case) -> None:
    victim, x, y = case
    counted = Counted(victim)
    res = zoattack.attack(
        counted,
        x,
        y,
        attack="zo",
        surrogates=[perturbed(victim), Net(seed=5)],
        norm="l2",
        eps=1.0,
        budget=40,
        subspace="full",
    )
    assert res.settings["estimator"] == "prior"
    assert "mean of their loss gradients" in res.method
    assert "surrogate_grads" in res.counting_rule
    assert int(res.queries.sum()) == counted.rows  # the ledger is the victim's rows only
    assert res.settings["surrogate_grads"] > 0  # counted apart


def test_the_victim_as_surrogate_is_labelled_white_box(case) -> None:
    victim, x, y = case
    kw = {"attack": "zo", "budget": 10, "subspace": "full"}
    res = zoattack.attack(victim, x, y, surrogates=[victim], **kw)
    assert "WHITE-BOX SETTING" in res.method
    other = zoattack.attack(victim, x, y, surrogates=[perturbed(victim)], **kw)
    assert "WHITE-BOX" not in other.method
