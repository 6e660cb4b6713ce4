"""``transfer`` (issue 25): success on an easy case (a surrogate that is the victim with
slightly perturbed weights) at exactly two victim queries per image, as the ledger says."""

from __future__ import annotations

import pytest
import torch
from test_surrogates import Counted, Net, perturbed  # same folder (rootless tests)

import zoattack
from zoattack.errors import InvalidInputError


@pytest.fixture
def easy() -> tuple[Net, torch.Tensor, torch.Tensor]:
    victim = Net()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = victim(x).argmax(dim=1)
    return victim, x, y


def test_surrogate_attacks_need_surrogates(easy) -> None:
    victim, x, y = easy
    for name in ("transfer",):
        with pytest.raises(InvalidInputError, match="--surrogates"):
            zoattack.attack(victim, x, y, attack=name, budget=20)


def test_transfer_succeeds_with_two_victim_queries_per_image(easy) -> None:
    victim, x, y = easy
    counted = Counted(victim)
    res = zoattack.attack(
        counted, x, y, attack="transfer", surrogates=[perturbed(victim)], eps=0.3, budget=50
    )
    assert res.success.float().mean() >= 0.75
    assert res.queries.tolist() == [2] * len(y)  # clean check + one check
    assert counted.rows == int(res.queries.sum())
    assert "zero-query baseline" in res.method
    assert bool((res.linf <= 0.3 + 1e-6).all())
