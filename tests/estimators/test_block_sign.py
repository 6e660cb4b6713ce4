"""The block_sign estimator: SignHunter's flips as probes, the block hierarchy and its
column order, the per-block estimate, per-example state (cursor, masked reset)."""

from __future__ import annotations

import pytest
import torch

from zoattack import BlackBox, FunctionObjective, make_generator
from zoattack.estimators import create_estimator

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


class Linear:
    """``f(x) = <w, x>`` recording every point it is asked about."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w, self.seen = w, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return (x.flatten(1).double() * self.w).sum(1)


def objective(fn) -> FunctionObjective:
    return FunctionObjective(BlackBox(fn, output="scores", bounds=None))


def test_defaults_and_cost():
    est = create_estimator("block_sign")
    assert (est.num_samples, est.mu, est.order) == (10, 0.2, "column")
    assert est.queries_per_call(784) == 11


def test_first_pass_is_coarse_to_fine_and_flips_signs():
    d = 8
    w = torch.arange(1.0, d + 1, dtype=F64)
    fn = Linear(w)
    x = torch.tensor([[0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.0, 0.1]], dtype=F64)
    est = create_estimator("block_sign", num_samples=7, mu=0.2, order="row")
    res = est.estimate(objective(fn), x, generator=make_generator(0))
    disp = torch.cat(fn.seen)[1:] - x  # the base point comes first
    flip = torch.where(x > 0, -1.0, 1.0).to(F64)
    sizes = (disp != 0).sum(1).tolist()
    assert sizes == [8, 4, 4, 2, 2, 2, 2]  # levels 0, 1, 2 of the hierarchy
    support = disp != 0
    torch.testing.assert_close(disp[support], (0.2 * flip).expand_as(disp)[support])
    # Level 2's disjoint blocks give each coordinate the block's mean partial derivative.
    blocks = support[3:]
    expect = sum(((w * flip[0] * b).sum() / b.sum()) * b * flip[0] for b in blocks.double())
    torch.testing.assert_close(res.grad[0], expect.to(F64))


def test_column_order_blocks_are_vertical_stripes():
    fn = Linear(torch.ones(16, dtype=F64))
    x = torch.zeros(1, 1, 4, 4, dtype=F64)
    est = create_estimator("block_sign", num_samples=3)
    est.estimate(objective(fn), x, generator=make_generator(0))
    # Level 1 splits the (cyclically shifted) column order in two halves of 8 pixels.
    for half in torch.cat(fn.seen)[2:] != 0:
        cols = half[0].any(dim=0)
        rows_per_col = half[0].sum(dim=0)
        assert int(half.sum()) == 8
        # whole columns, except where the random shift cuts one column in two
        assert int(((rows_per_col > 0) & (rows_per_col < 4)).sum()) <= 2
        assert int(cols.sum()) <= 3


def test_full_pass_recovers_the_gradient_of_a_linear_function():
    d = 12
    w = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=F64)
    est = create_estimator("block_sign", num_samples=40, mu=1e-3)
    x = torch.full((2, d), 0.5, dtype=F64)
    g = est.estimate(objective(Linear(w)), x, generator=make_generator(0)).grad
    torch.testing.assert_close(g, w.expand(2, d), rtol=1e-6, atol=1e-6)


def test_cursor_advances_per_example_and_masked_reset():
    fn = Linear(torch.ones(6, dtype=F64))
    est = create_estimator("block_sign", num_samples=2)
    x = torch.zeros(3, 6, dtype=F64)
    obj = objective(fn)
    est.estimate(obj, x, generator=make_generator(0))
    est.estimate(obj, x[:2], generator=make_generator(0), idx=torch.tensor([0, 1]))
    assert est.state.tensors["cursor"].tolist() == [4, 4, 2]
    est.reset(torch.tensor([True, False, False]))
    assert est.state.tensors["cursor"].tolist() == [0, 4, 2]
    state = est.state_dict()
    other = create_estimator("block_sign", num_samples=2)
    other.load_state_dict(state)
    assert other.state.tensors["cursor"].tolist() == [0, 4, 2]


@pytest.mark.parametrize(
    "kwargs, needle", [({"order": "diagonal"}, "order"), ({"difference": "central"}, "central")]
)
def test_invalid_options_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_estimator("block_sign", **kwargs)


def test_rules_take_it_by_name():
    from zoattack.optim import create_optimizer

    for name in ("radazo", "lizo"):
        rule = create_optimizer(name, lr=0.2, estimator="block_sign", num_samples=5)
        assert rule.estimator.name == "block_sign" and rule.estimator.num_samples == 5
