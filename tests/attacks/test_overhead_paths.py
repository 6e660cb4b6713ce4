"""Edge cases of the per-step fast paths: one reduction validating inputs and scores, and
the row count PerExampleState remembers between accesses with the same index tensor."""

import pytest
import torch

from zoattack._state import PerExampleState
from zoattack.attacks.sign import SignRule, block_bounds, finest_level, schedule_tables
from zoattack.blackbox import BlackBox
from zoattack.errors import InvalidInputError, InvalidScoresError, QueryBudgetExceeded
from zoattack.objective import FunctionObjective


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


# ---------------------------------------------------------------- sign's schedule tables
def _old_commit(level, chunk, d):
    """The (level, chunk) advance SignRule used before its schedule became a node table."""
    _, end = block_bounds(level, chunk, d)
    nxt = chunk + 1
    up = (nxt >= (1 << level)) | (end >= d)
    new_level = torch.where(up, level + 1, level)
    new_level = torch.where(new_level > finest_level(d), 0, new_level)
    return new_level, torch.where(up, 0, nxt)


@pytest.mark.parametrize("d", [1, 2, 3, 6, 10, 30, 784, 3072])
@pytest.mark.parametrize("extra", [0, 2])
def test_sign_schedule_tables_match_the_arithmetic(d, extra):
    # Every node 2**level + chunk a table holds (extra: levels a larger variable left behind)
    # has the chunk bounds and the successor the (level, chunk) arithmetic gives.
    levels = finest_level(d) + 1 + extra
    lo, hi, nxt = schedule_tables(d, levels, torch.device("cpu"))
    node = torch.arange(1, 1 << levels)
    level = torch.tensor([int(i).bit_length() - 1 for i in node])
    chunk = node - (1 << level)
    start, end = block_bounds(level, chunk, d)
    assert torch.equal(lo[1:, 0], start) and torch.equal(hi[1:, 0], end)
    new_level, new_chunk = _old_commit(level, chunk, d)
    assert torch.equal(nxt[1:], (1 << new_level) + new_chunk)


class LevelChunkSign(SignRule):
    """SignRule with the (level, chunk) state and arithmetic it had before the node tables."""

    def _propose(self, objective, x, first, steps, idx, generator):
        n, d = x.shape[0], x[0].numel()
        ranks = self._ranks(x, idx, first, generator)
        level = self.state.get("level", idx, (), dtype=torch.int64, device=x.device)
        chunk = self.state.get("chunk", idx, (), dtype=torch.int64, device=x.device)
        lo, hi = block_bounds(level, chunk, d)
        flip = (ranks >= lo.unsqueeze(1)) & (ranks < hi.unsqueeze(1))
        negative = flip != (x < 0).reshape(n, d)
        cand = torch.where(negative, -1.0, 1.0).to(x.dtype)
        m = int(first.sum())
        if m:
            init = self._start_signs(x, m, generator).reshape(m, d)
            warm = x[first].reshape(m, d).sign()
            cand[first] = torch.where(warm != 0, warm, init)
        return self.lr * cand.view_as(x)

    def _commit(self, x, idx, first, accept):
        d = x[0].numel()
        level = self.state.get("level", idx, (), dtype=torch.int64, device=x.device)
        chunk = self.state.get("chunk", idx, (), dtype=torch.int64, device=x.device)
        new_level, new_chunk = _old_commit(level, chunk, d)
        self.state.set("level", idx, torch.where(first, level, new_level))
        self.state.set("chunk", idx, torch.where(first, chunk, new_chunk))


@pytest.mark.parametrize("opts", [{}, {"start": "stripes", "block_order": "random"}])
def test_sign_node_schedule_equals_the_level_chunk_form(opts):
    # 120 steps on a noisy objective (accepts and rejects), a subset step, a reset of one
    # example and a switch to a larger variable (the stored schedule carries over).
    def steps_of(rule):
        gen = torch.Generator().manual_seed(2)
        bb = BlackBox(
            lambda z: (z.flatten(1) ** 3).sum(1) + z.flatten(1)[:, 7], output="scores", bounds=None
        )
        obj = FunctionObjective(bb)
        x = torch.zeros(4, 3, 5, 5)
        seen = []
        for t in range(120):
            idx = torch.arange(4) if t % 17 else torch.tensor([1, 3])
            if t == 60:
                rule.reset(torch.tensor([False, False, True, False]))
            if t == 80:
                x = x.repeat(1, 1, 2, 2)  # a larger variable, as after a subspace refine
            res = rule.step(obj, x[idx], generator=gen, idx=idx)
            x[idx] = res.x_next
            seen.append((res.x_next.clone(), res.fx_next.clone()))
        return seen

    new, old = steps_of(SignRule(lr=0.05, **opts)), steps_of(LevelChunkSign(lr=0.05, **opts))
    for (xa, fa), (xb, fb) in zip(new, old, strict=True):
        assert torch.equal(xa, xb) and torch.equal(fa, fb)


# ------------------------------------------------------------------ the attack loop's memos
EPS = 0.01  # about half the images are fooled, at different steps


def _weak_victim():
    lin = torch.nn.Linear(4, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 4, generator=torch.Generator().manual_seed(3)))
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # centred: pooled features near 0.5 decide
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), lin).eval()


@pytest.mark.parametrize("method", ["sign", "square", "zo_signsgd"])
def test_loop_memos_give_the_results_of_recomputing(monkeypatch, method):
    # Images finish at different steps (a weak victim), so active ids, any-active and the
    # whole-batch shortcuts all change mid-run; the memoised loop must match a loop that
    # recomputes them every time (and never hands the rule run.idx as a stand-in).
    from zoattack.attacks import base
    from zoattack.jobs.attack import AttackSpec

    net = _weak_victim()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = net(x).argmax(1)
    spec = AttackSpec(norm="linf", eps=EPS, budget=80, optimizer=method, subspace="full")
    spec = spec.resolved()

    def run(steps):
        bb = BlackBox(net, output="logits", budget=80)
        res = base.run_attack(
            bb,
            x,
            y,
            spec.make_rule(),
            generator=torch.Generator().manual_seed(0),
            norm="linf",
            eps=EPS,
            budget=80,
            subspace=spec.subspace,
            callback=lambda step, _r, spent: steps.append(spent.clone()),
        )
        return res

    fast_steps: list = []
    fast = run(fast_steps)
    monkeypatch.setattr(base, "_memo", lambda state: None)
    monkeypatch.setattr(base, "_active_ids", lambda run, state: state.active.nonzero().flatten())
    slow_steps: list = []
    slow = run(slow_steps)
    assert 0 < int(fast.success.sum()) < 12, "no mix of finished and running images"
    assert torch.equal(fast.x_adv, slow.x_adv) and torch.equal(fast.queries, slow.queries)
    assert fast.stop_reason == slow.stop_reason and torch.equal(fast.final_pred, slow.final_pred)
    assert len(fast_steps) == len(slow_steps)
    assert all(torch.equal(a, b) for a, b in zip(fast_steps, slow_steps, strict=True))


# ------------------------------------------------------------------------------- ledger
def test_ledger_grows_from_the_bincount_and_refusals_leave_it_alone():
    bb = BlackBox(
        lambda z: z.sum(1, keepdim=True).expand(-1, 2), output="logits", budget=2, input_shape=(3,)
    )
    bb.query(torch.rand(2, 3), torch.tensor([4, 1]))
    assert bb.queries.tolist() == [0, 1, 0, 0, 1]  # grown to the highest id + 1
    bb.query(torch.rand(3, 3), torch.tensor([1, 0, 0]))
    assert bb.queries.tolist() == [2, 2, 0, 0, 1]
    before = bb.queries
    with pytest.raises(QueryBudgetExceeded):
        bb.query(torch.rand(2, 3), torch.tensor([7, 0]))  # 7 is new and fine, 0 is not
    assert bb.queries.tolist() == before.tolist() + [0, 0, 0]  # refused: nothing charged
    unlimited = BlackBox(lambda z: z.sum(1, keepdim=True).expand(-1, 2), output="logits")
    unlimited.query(torch.rand(3, 3), torch.tensor([2, 2, 0]))
    assert unlimited.queries.tolist() == [1, 0, 2]
    with pytest.raises(InvalidInputError, match=">= 0"):
        unlimited.query(torch.rand(1, 3), torch.tensor([-3]))
    assert unlimited.queries.tolist() == [1, 0, 2]


def test_search_step_reports_one_query_per_example():
    rule = SignRule(lr=0.05)
    obj = FunctionObjective(BlackBox(lambda z: z.flatten(1).sum(1), output="scores", bounds=None))
    res = rule.step(obj, torch.zeros(3, 4), generator=torch.Generator().manual_seed(0))
    assert res.queries.tolist() == [1, 1, 1] and res.queries.dtype == torch.int64
    assert res.queries is res.queries  # built once


# ------------------------------------------------- projection fused into probe scoring
def _pooled_victim(channels: int):
    lin = torch.nn.Linear(4 * channels, 10)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        lin.weight.copy_(torch.randn(10, 4 * channels, generator=gen))
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # centred: pooled means near 0.5 decide
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), lin).eval()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 96, 96)], ids=str)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("optimizer, estimator", [("lizo", None), ("zo_sgd", "lizo")])
@pytest.mark.parametrize("path", ["projection", "blocks"])
def test_lizo_fast_paths_change_nothing(monkeypatch, shape, norm, optimizer, estimator, path):
    # projection: LIZO projects its probes in place and the attack objective scores them
    # (and the loop's projected iterates) without a second projection where that is exact
    # (Linf clamps on full/tile spaces; lizo's Linf default runs tile:7 > tile:14 > full,
    # which 32 and 96 do not divide), against a projected copy that scoring projects again.
    # blocks: steps where every example reuses as many rows build, score and store the fresh
    # probes as one block, against the slot-by-slot path. Either way the runs must agree bit
    # for bit, seed after seed, fooled images included.
    from zoattack.attacks import base
    from zoattack.estimators.lizo import LIZOEstimator
    from zoattack.jobs.attack import AttackSpec

    net = _pooled_victim(shape[0])
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = 0.01 if norm == "linf" else 1.0
    spec = AttackSpec(norm=norm, eps=eps, budget=60, optimizer=optimizer, estimator=estimator)
    spec = spec.resolved()

    def runs():
        out = []
        for seed in range(3):
            bb = BlackBox(net, output="logits", budget=60)
            res = base.run_attack(
                bb,
                x,
                y,
                spec.make_rule(),
                generator=torch.Generator().manual_seed(seed),
                norm=norm,
                eps=eps,
                budget=60,
                subspace=spec.subspace,
            )
            out.append(res)
        return out

    fused = runs()
    if path == "projection":
        no = property(lambda self: False)
        monkeypatch.setattr(base.AttackObjective, "_clamp_projects", no)
        monkeypatch.delattr(base.AttackObjective, "feasible_")
        monkeypatch.delattr(base.AttackObjective, "score_feasible")
    else:
        monkeypatch.setattr(LIZOEstimator, "_by_blocks", False)
    old = runs()
    if norm == "linf" and optimizer == "lizo":  # finished and running images mixed
        assert 0 < sum(int(r.success.sum()) for r in fused) < 18
    for a, b in zip(fused, old, strict=True):
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
        assert torch.equal(a.final_pred, b.final_pred) and a.stop_reason == b.stop_reason
