"""BlackBox: the query ledger, budget refusal before scoring, chunking, output kinds, checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from zoattack import BlackBox, InvalidScoresError, QueryBudgetExceeded
from zoattack.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting:
    """A scorer that counts its calls and remembers each batch size."""

    def __init__(self, fn=None) -> None:
        self.fn = fn or (lambda x: x.flatten(1).sum(1))
        self.sizes: list[int] = []

    def __call__(self, x):
        self.sizes.append(x.shape[0])
        return self.fn(x)


def linear_classifier(num_classes: int = 4, d: int = 6) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(d, num_classes)
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=g))
        model.bias.copy_(torch.randn(model.bias.shape, generator=g))
    return model.eval()


# ------------------------------------------------------------------------------- ledger
def test_query_charges_each_input_to_its_owner():
    fn = Counting()
    bb = BlackBox(fn, output="scores", bounds=None)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out = bb.query(x, torch.tensor([2, 2, 0, 4, 2]))
    torch.testing.assert_close(out, x.sum(1))
    assert bb.queries.tolist() == [1, 0, 3, 0, 1]
    assert bb.total_queries == 5
    assert bb.queries_of(torch.tensor([2, 1])).tolist() == [3, 0]


def test_grid_call_charges_k_per_listed_example_only():
    bb = BlackBox(Counting(), output="scores", bounds=None)
    x = torch.zeros(2, 3, 4)  # N=2 examples, K=3 candidates each
    out = bb(x, torch.tensor([5, 1]))
    assert out.shape == (2, 3)
    expected = torch.zeros(6, dtype=torch.int64)
    expected[[5, 1]] = 3
    assert torch.equal(bb.queries, expected)


def test_queries_property_is_a_copy():
    bb = BlackBox(Counting(), output="scores", bounds=None)
    bb.query(torch.zeros(2, 3), torch.tensor([0, 1]))
    q = bb.queries
    q += 100
    assert bb.queries.tolist() == [1, 1]


def test_reset_and_load_counts():
    bb = BlackBox(Counting(), output="scores", bounds=None)
    bb.query(torch.zeros(4, 2), torch.tensor([0, 1, 1, 2]))
    saved = bb.queries
    bb.reset_counts(torch.tensor([False, True, False]))
    assert bb.queries.tolist() == [1, 0, 1]
    bb.load_counts(saved)
    assert bb.queries.tolist() == [1, 2, 1]
    bb.reset_counts()
    assert bb.total_queries == 0


# ------------------------------------------------------------------------------- budget
def test_budget_refusal_happens_before_any_model_call():
    fn = Counting()
    bb = BlackBox(fn, output="scores", bounds=None, budget=5)
    bb.query(torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]))
    calls_before, ledger_before = len(fn.sizes), bb.queries
    # Example 0 would reach 3 + 3 = 6 > 5: the whole call is refused, nothing scored.
    with pytest.raises(QueryBudgetExceeded) as info:
        bb.query(torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]))
    assert len(fn.sizes) == calls_before
    assert torch.equal(bb.queries, ledger_before)
    assert info.value.examples == [0]
    assert info.value.budget == 5
    assert info.value.needed == [6]
    # Exactly reaching the budget is allowed.
    bb.query(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
    assert bb.queries.tolist() == [5, 2]


def test_budget_is_per_example():
    bb = BlackBox(Counting(), output="scores", bounds=None, budget=2)
    bb(torch.zeros(3, 2, 1))  # each of 3 examples spends its whole budget
    with pytest.raises(QueryBudgetExceeded):
        bb(torch.zeros(1, 1, 1), torch.tensor([1]))
    bb(torch.zeros(1, 1, 1), torch.tensor([7]))  # a fresh example still has budget
    assert bb.remaining(torch.tensor([0, 7])).tolist() == [0, 1]


# ------------------------------------------------------------------------------ chunking
@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40),
    max_batch=st.integers(1, 9),
    n_owners=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_chunking_and_ledger_property(m, max_batch, n_owners, seed):
    gen = torch.Generator().manual_seed(seed)
    fn = Counting()
    bb = BlackBox(fn, output="scores", bounds=None, max_batch=max_batch)
    x = torch.randn(m, 3, generator=gen)
    owner = torch.randint(0, n_owners, (m,), generator=gen)
    out = bb.query(x, owner)
    assert all(s <= max_batch for s in fn.sizes)
    assert sum(fn.sizes) == m
    assert len(fn.sizes) == -(-m // max_batch)
    torch.testing.assert_close(out, x.sum(1))  # order preserved across chunks
    assert torch.equal(bb.queries, torch.bincount(owner, minlength=len(bb.queries)))


# ------------------------------------------------------------------------- bad outputs
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_rejected_and_not_charged(bad):
    def fn(x):
        out = x.sum(1)
        out[1] = bad
        return out

    bb = BlackBox(fn, output="scores", bounds=None)
    with pytest.raises(InvalidScoresError, match="NaN/inf"):
        bb.query(torch.zeros(3, 2))
    assert bb.total_queries == 0


def test_wrong_number_of_scores_is_rejected():
    bb = BlackBox(lambda x: torch.zeros(x.shape[0] + 1), output="scores", bounds=None)
    with pytest.raises(InvalidScoresError, match="shape"):
        bb.query(torch.zeros(3, 2))


def test_classifier_must_return_2d_scores():
    bb = BlackBox(lambda x: torch.zeros(x.shape[0]), output="logits", bounds=None)
    with pytest.raises(InvalidScoresError, match="classes"):
        bb.query(torch.zeros(3, 2))


# --------------------------------------------------------------------------- output kinds
def test_logits_probs_labels():
    model = linear_classifier()
    x = torch.rand(7, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x)
    out = {
        kind: BlackBox(model, output=kind)(x.unsqueeze(0)) for kind in ("logits", "probs", "labels")
    }
    torch.testing.assert_close(out["logits"][0], logits)
    torch.testing.assert_close(out["probs"][0], torch.softmax(logits, -1))
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(1, 7))
    assert out["labels"].dtype == torch.int64
    assert torch.equal(out["labels"][0], logits.argmax(-1))


def test_training_module_is_switched_to_eval_with_a_warning():
    model = linear_classifier().train()
    with pytest.warns(UserWarning, match="eval"):
        BlackBox(model)
    assert not model.training


def test_module_runs_without_grad_and_in_its_dtype():
    model = linear_classifier().double()
    bb = BlackBox(model, output="logits")
    out = bb.query(torch.rand(2, 6))  # float32 in, cast to the module's float64
    assert out.dtype == torch.float64
    assert not out.requires_grad


# -------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "x, needle",
    [
        (torch.zeros(3, 5), "shape"),  # wrong per-example shape
        (torch.zeros(3, 6, dtype=torch.int64), "floating"),  # not floating point
        (torch.full((3, 6), 1.5), r"\[0.0, 1.0\]"),  # out of bounds
        (torch.full((3, 6), float("nan")), "NaN"),  # non-finite input
    ],
)
def test_bad_inputs_are_rejected_before_scoring(x, needle):
    fn = Counting(lambda z: z.sum(1, keepdim=True).expand(-1, 2))
    bb = BlackBox(fn, output="logits", input_shape=(6,))
    with pytest.raises(InvalidInputError, match=needle):
        bb.query(x)
    assert fn.sizes == [] and bb.total_queries == 0


def test_bad_owner_and_grid_shapes():
    bb = BlackBox(Counting(), output="scores", bounds=None)
    with pytest.raises(InvalidInputError, match="owner"):
        bb.query(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(InvalidInputError, match=r"\(N, K"):
        bb(torch.zeros(4))
    with pytest.raises(InvalidInputError, match=">= 0"):
        bb.query(torch.zeros(2, 2), torch.tensor([0, -1]))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"output": "margin"}, "output"),
        ({"max_batch": 0}, "max_batch"),
        ({"budget": 0}, "budget"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_bad_constructor_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BlackBox(Counting(), **kwargs)


def test_empty_query_costs_nothing():
    fn = Counting()
    bb = BlackBox(fn, output="scores", bounds=None)
    out = bb.query(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    assert out.numel() == 0 and fn.sizes == [] and bb.total_queries == 0
