"""Edge cases of the per-step fast paths: one reduction validating inputs and scores, and
the row count PerExampleState remembers between accesses with the same index tensor."""

import pytest
import torch

from zoattack._state import PerExampleState
from zoattack.blackbox import BlackBox
from zoattack.errors import InvalidInputError, InvalidScoresError


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_one_non_finite_input_among_valid_ones_is_rejected(bad, bounds):
    bb = BlackBox(
        lambda z: z.sum(1, keepdim=True).expand(-1, 2),
        output="logits",
        input_shape=(6,),
        bounds=bounds,
    )
    x = torch.rand(4, 6)
    x[2, 3] = bad
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        bb.query(x)
    assert bb.total_queries == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_score_is_rejected(bad):
    def model(z):
        out = z.sum(1, keepdim=True).expand(-1, 2).clone()
        out[1, 0] = bad
        return out

    bb = BlackBox(model, output="logits", input_shape=(6,))
    with pytest.raises(InvalidScoresError, match="NaN/inf"):
        bb.query(torch.rand(3, 6))


def test_state_row_count_follows_in_place_changes_of_idx():
    state = PerExampleState()
    idx = torch.tensor([0, 1])
    assert state.get("a", idx, (), dtype=torch.float64, device=torch.device("cpu")).shape == (2,)
    idx[1] = 7  # same tensor, new content: the remembered row count must not be reused
    state.get("a", idx, (), dtype=torch.float64, device=torch.device("cpu"))
    assert len(state.tensors["a"]) == 8
    state.set("a", idx, torch.tensor([1.0, 2.0]))
    assert state.tensors["a"][[0, 1, 7]].tolist() == [1.0, 0.0, 2.0]
