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


@pytest.mark.parametrize(
    "ids",
    [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2], [1, 2, 3], [0, 0, 2, 3]],
    ids=["every-row", "reversed", "prefix", "shifted", "repeat"],
)
def test_state_set_writes_the_rows_indexing_would(ids):
    # The whole-batch shortcut (a plain copy when idx is 0..n-1) must write exactly what
    # t[idx] = value writes, and only take effect for that idx.
    cpu = torch.device("cpu")
    state = PerExampleState()
    state.get("a", torch.arange(4), (2,), dtype=torch.float32, device=cpu, fill=-1.0)
    idx = torch.tensor(ids)
    state.get("a", idx, (2,), dtype=torch.float32, device=cpu)
    value = torch.arange(2.0 * len(ids), dtype=torch.float64).view(-1, 2) / 3
    expected = state.tensors["a"].clone()
    expected[idx] = value.to(torch.float32)
    state.set("a", idx, value)
    assert torch.equal(state.tensors["a"], expected)
    assert state.tensors["a"].dtype == torch.float32


def test_recent_pred_matches_the_general_path():
    from zoattack.attacks.base import AttackObjective
    from zoattack.subspace import Subspace

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    obj = AttackObjective(
        BlackBox(net, output="logits"),
        torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0)),
        torch.zeros(4, dtype=torch.long),
        norm="linf",
        eps=0.1,
        subspace=Subspace("full", (1, 2, 2)),
    )
    ids = torch.arange(4)
    loss, pred = obj.score(torch.zeros(4, 1, 2, 2), ids)
    query = loss.clone()
    query[1] = 5.0  # no row of the latest call has this loss: the fallback is kept
    fallback = torch.full((4,), 9, dtype=torch.long)
    fast = obj.recent_pred(ids, query, fallback)  # owner == ids: the row-by-row shortcut
    # The general rule: per id, the prediction of a row of that image with that loss.
    owner, losses, preds = obj._recent
    match = (owner.unsqueeze(0) == ids.unsqueeze(1)) & (losses.unsqueeze(0) == query.unsqueeze(1))
    slow = torch.where(match.any(dim=1), preds[match.int().argmax(dim=1)], fallback)
    assert fast.tolist() == [int(pred[0]), 9, int(pred[2]), int(pred[3])]
    assert torch.equal(fast, slow)
    # A different set of ids takes the general (matrix) path and agrees.
    assert obj.recent_pred(ids[[2, 0]], query[[2, 0]], fallback[:2]).tolist() == [
        int(pred[2]),
        int(pred[0]),
    ]


def test_queries_of_follows_in_place_changes_of_idx():
    # queries_of remembers the row count of the id tensor it was last given; an in-place
    # change of that tensor must be seen, and negative ids keep indexing's meaning.
    bb = BlackBox(torch.nn.Sequential(torch.nn.Linear(2, 3)).eval(), output="logits")
    ids = torch.tensor([0, 3])
    assert bb.queries_of(ids).tolist() == [0, 0]
    bb.query(torch.rand(3, 2), torch.tensor([3, 3, 0]))
    assert bb.queries_of(ids).tolist() == [1, 2]
    ids[0] = 5
    assert bb.queries_of(ids).tolist() == [0, 2]
    assert len(bb.queries) == 6
    assert bb.queries_of(torch.tensor([-1, 3])).tolist() == [0, 2]
