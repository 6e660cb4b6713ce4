"""Decision attacks (opt, sign_opt, hsja, rays) end to end on the digits victim: distances
fall, every reported adversarial is re-checked by the model, budgets and ledgers hold, the
model's scores never reach the attack, targeted starts and failed starts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from zoattack import BlackBox, make_generator
from zoattack.attacks.hardlabel import (
    DECISION_ATTACKS,
    create_decision_attack,
    list_decision_attacks,
    run_decision_attack,
    target_starts,
)
from zoattack.norms import distance

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [
    ("opt", "l2"),
    ("opt", "linf"),
    ("sign_opt", "l2"),
    ("sign_opt", "linf"),
    ("hsja", "l2"),
    ("hsja", "linf"),
    ("rays", "linf"),
]
# small, fast settings for an 8x8 victim
FAST = {
    "opt": {"num_samples": 5},
    "sign_opt": {"num_directions": 20},
    "hsja": {"init_evals": 20},
    "rays": {},
}


class Counting(nn.Module):
    """Counts every input the model scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.seen += x.shape[0]
        return self.model(x)


@pytest.fixture(scope="module")
def victim(digits_victim):
    model, x, y = digits_victim
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok], y[ok]


def attack(victim, name, norm, *, n=4, budget=300, seed=0, model=None, **kw):
    base, x, y = victim[0], victim[1][:n], victim[2][:n]
    bb = BlackBox(model or base, output="labels", budget=budget)
    eps = 1.0 if norm == "l2" else 0.1
    res = run_decision_attack(
        name,
        bb,
        x,
        y,
        generator=make_generator(seed),
        norm=norm,
        eps=eps,
        budget=budget,
        options=FAST[name],
        **kw,
    )
    return res, bb, x, y


def test_registry_lists_labels_only_attacks():
    assert set(list_decision_attacks()) == {"opt", "sign_opt", "hsja", "rays"}
    for entry in DECISION_ATTACKS:
        assert entry.flags["needs"] == "labels"
    assert DECISION_ATTACKS.get("rays").flags["norms"] == ("linf",)
    assert isinstance(create_decision_attack("hopskipjump"), type(create_decision_attack("hsja")))


@pytest.mark.parametrize("name,norm", CASES)
def test_attack_reduces_distance_and_reports_checked_adversarials(victim, name, norm):
    model = victim[0]
    res, bb, x, y = attack(victim, name, norm)
    assert bool(res.found.all()), res.stop_reason
    assert int(res.queries.max()) <= 300
    assert torch.equal(res.queries, bb.queries[: len(y)])
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert bool((pred != y).all())  # re-checked with the model itself
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert torch.allclose(res.distance, distance(res.x_adv, x, norm))
    for i, curve in enumerate(res.curve):
        dists = [d for _, d in curve]
        qs = [q for q, _ in curve]
        assert dists == sorted(dists, reverse=True), f"image {i}: distance went up"
        assert qs == sorted(qs) and qs[-1] <= int(res.queries[i])
        assert abs(dists[-1] - float(res.distance[i])) < 1e-9
        # the attack improved on its start (the first adversarial it found) substantially
        assert dists[-1] < 0.8 * dists[0], (name, norm, dists[0], dists[-1])
        if res.queries_to_eps[i] >= 0:
            first = next(q for q, d in curve if d <= res.eps)
            assert int(res.queries_to_eps[i]) == first
    assert torch.equal(res.success, res.distance <= res.eps)


def test_attack_is_deterministic_given_the_generator(victim):
    a, _, _, _ = attack(victim, "sign_opt", "l2", n=2, budget=150, seed=3)
    b, _, _, _ = attack(victim, "sign_opt", "l2", n=2, budget=150, seed=3)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)


class ArgmaxOnly(nn.Module):
    """Same top-1 labels as ``model`` with unrelated scores: anything an attack learns from
    scores would change its course."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(x.shape[0]))
        onehot = nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()
        return noise + 5.0 * onehot


class SpyBlackBox(BlackBox):
    """Records what the black box hands back to attack code."""

    returned: list[Tensor]

    def query(self, x: Tensor, owner: Tensor | None = None) -> Tensor:
        out = super().query(x, owner)
        self.returned.append(out)
        return out


@pytest.mark.parametrize("name,norm", [("opt", "l2"), ("hsja", "linf"), ("rays", "linf")])
def test_labels_only_path_never_exposes_scores(victim, name, norm):
    model, x, y = victim[0], victim[1][:3], victim[2][:3]
    results = []
    for m in (model, ArgmaxOnly(model).eval()):
        spy = SpyBlackBox(m, output="labels", budget=120)
        spy.returned = []
        res = run_decision_attack(
            name,
            spy,
            x,
            y,
            generator=make_generator(1),
            norm=norm,
            eps=0.1,
            budget=120,
            options=FAST[name],
        )
        assert all(t.dtype == torch.int64 and t.dim() == 1 for t in spy.returned)
        results.append(res)
    a, b = results
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert a.curve == b.curve
    for output in ("logits", "probs"):
        with pytest.raises(ValueError, match="labels only"):
            run_decision_attack(
                name,
                BlackBox(model, output=output),
                x,
                y,
                generator=make_generator(1),
                norm=norm,
                eps=0.1,
                budget=50,
                options=FAST[name],
            )


@pytest.mark.parametrize("name", ["opt", "sign_opt", "hsja", "rays"])
def test_targeted_starts_from_the_target_class(victim, name):
    model, x, y = victim[0], victim[1], victim[2]
    target_class = 3
    src = (y != target_class).nonzero().flatten()[:3]
    pool = (y == target_class).nonzero().flatten()
    assert pool.numel() >= 1
    x0, y0 = x[src], y[src]
    x_init = x[pool[:1]].expand(len(src), -1, -1, -1).clone()
    # the last image gets a start that is not of the target class: no_start after 1 question
    x_init[-1] = x0[-1]
    target = torch.full_like(y0, target_class)
    norm = "linf" if name == "rays" else "l2"
    counting = Counting(model).eval()
    bb = BlackBox(counting, output="labels", budget=200)
    res = run_decision_attack(
        name,
        bb,
        x0,
        y0,
        generator=make_generator(0),
        norm=norm,
        eps=0.1,
        budget=200,
        target=target,
        x_init=x_init,
        options=FAST[name],
    )
    assert res.stop_reason[-1] == "no_start" and int(res.queries[-1]) == 2
    assert bool(res.found[:-1].all())
    with torch.no_grad():
        pred = model(res.x_adv[:-1]).argmax(1)
    assert bool((pred == target_class).all())
    if name != "rays":  # rays searches sign rays, not the segment towards x_init
        start = distance(x_init[:-1], x0[:-1], norm)
        assert bool((res.distance[:-1] <= start + 1e-6).all())
    assert counting.seen == int(res.queries.sum())
    with pytest.raises(ValueError, match="x_init"):
        run_decision_attack(
            name,
            bb,
            x0,
            y0,
            generator=make_generator(0),
            norm=norm,
            eps=0.1,
            budget=50,
            target=target,
        )


def test_misclassified_images_cost_one_query_and_failed_starts_end_no_start(victim):
    model, x_ok, y_ok = victim[0], victim[1], victim[2]
    x = x_ok[:2]
    y = torch.stack([y_ok[0], (y_ok[1] + 1) % 10])  # the model gets the second one "wrong"
    res = run_decision_attack(
        "hsja",
        BlackBox(model, output="labels"),
        x,
        y,
        generator=make_generator(0),
        norm="l2",
        eps=1.0,
        budget=100,
        options=FAST["hsja"],
    )
    assert res.stop_reason[1] == "misclassified" and int(res.queries[1]) == 1
    assert not bool(res.found[1]) and not bool(res.success[1])
    # a model that never changes its mind: no start exists
    const = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        const[1].weight.zero_()
        const[1].bias.copy_(torch.arange(10.0))
    y9 = torch.full((2,), 9)
    for name in ("opt", "sign_opt", "hsja", "rays"):
        res = run_decision_attack(
            name,
            BlackBox(const, output="labels"),
            x,
            y9,
            generator=make_generator(0),
            norm="linf",
            eps=0.1,
            budget=60,
            options={**FAST[name]},
        )
        assert res.stop_reason == ["no_start", "no_start"], name
        assert int(res.queries.max()) <= 60
        assert bool(torch.isinf(res.distance).all())


def test_bad_input_is_refused_with_a_clear_error(victim):
    model, x, y = victim[0], victim[1][:2], victim[2][:2]
    bb = BlackBox(model, output="labels")
    gen = make_generator(0)
    with pytest.raises(ValueError, match="supports linf"):
        run_decision_attack("rays", bb, x, y, generator=gen, norm="l2", eps=1.0, budget=50)
    with pytest.raises(ValueError, match="budget"):
        run_decision_attack("hsja", bb, x, y, generator=gen, norm="l2", eps=1.0, budget=1)
    with pytest.raises(ValueError, match="does not take option"):
        create_decision_attack("sign_opt", lr=0.1)
    with pytest.raises(ValueError, match="search rule"):
        create_decision_attack("opt", optimizer="sign")


@settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.sampled_from(CASES),
    budget=st.integers(2, 160),
    picks=st.lists(st.integers(0, 11), min_size=1, max_size=4),
    wrong=st.lists(st.booleans(), min_size=4, max_size=4),
    seed=st.integers(0, 3),
)
def test_budget_is_never_exceeded(victim, case, budget, picks, wrong, seed):
    """Random budgets and batch compositions (repeats, misclassified images): the black box
    itself holds the budget, so one question too many would raise; the ledger equals the
    inputs the model scored."""
    name, norm = case
    model, x_ok, y_ok = victim[0], victim[1], victim[2]
    x = x_ok[torch.tensor(picks)]
    y = y_ok[torch.tensor(picks)].clone()
    flip = torch.tensor(wrong[: len(picks)])
    y[flip] = (y[flip] + 1) % 10
    counting = Counting(model).eval()
    bb = BlackBox(counting, output="labels", budget=budget)
    res = run_decision_attack(
        name,
        bb,
        x,
        y,
        generator=make_generator(seed),
        norm=norm,
        eps=0.1,
        budget=budget,
        options=FAST[name],
    )
    assert int(res.queries.max()) <= budget
    assert counting.seen == int(res.queries.sum()) == bb.total_queries
    for i, reason in enumerate(res.stop_reason):
        if bool(flip[i]):
            assert reason == "misclassified" and int(res.queries[i]) == 1
        else:
            assert reason in ("budget", "no_start", "steps")
            assert reason == "no_start" or bool(res.found[i])


def test_stop_at_eps_ends_images_with_success_early(victim):
    model, x, y = victim[0], victim[1][:3], victim[2][:3]
    res = run_decision_attack(
        "rays",
        BlackBox(model, output="labels"),
        x,
        y,
        generator=make_generator(0),
        norm="linf",
        eps=0.5,
        budget=400,
        stop_at_eps=True,
    )
    assert res.stop_reason == ["success"] * 3
    assert bool(res.success.all()) and int(res.queries.max()) < 400
    assert bool((res.queries_to_eps >= 1).all() & (res.queries_to_eps <= res.queries).all())


@pytest.mark.parametrize("name", ["sign_opt", "hsja", "opt"])
def test_subspace_variants_run_within_budget(victim, name):
    model, x, y = victim[0], victim[1][:2], victim[2][:2]
    counting = Counting(model).eval()
    res = run_decision_attack(
        name,
        BlackBox(counting, output="labels", budget=150),
        x,
        y,
        generator=make_generator(0),
        norm="l2",
        eps=1.0,
        budget=150,
        options={**FAST[name], "subspace": "dct:4"},
    )
    assert bool(res.found.all()) and int(res.queries.max()) <= 150
    assert counting.seen == int(res.queries.sum())
    first = torch.tensor([c[0][1] for c in res.curve], dtype=torch.float64)
    assert bool((res.distance < first).all())


def test_target_starts_come_from_the_target_class_without_queries(victim):
    _, x, y = victim
    target = torch.tensor([3, 3, 7, 0])
    starts = target_starts(x, y, target, make_generator(0))
    for i, cls in enumerate(target.tolist()):
        match = (x == starts[i]).flatten(1).all(1)
        assert bool(match.any()) and set(y[match].tolist()) == {cls}
    with pytest.raises(ValueError, match="no image of target class"):
        target_starts(x, y, torch.tensor([11]), make_generator(0))
