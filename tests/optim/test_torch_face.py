"""The torch.optim faces (``zoattack.optim.LIZO``, ``R_AdaZO``, ...): the two README snippets
run unchanged, every face is a ``torch.optim.Optimizer`` with ``step(closure)``, counts and
caps its queries, round-trips its state, honours per-group learning rates and leaves torch's
global RNG alone. Faces are discovered as subclasses of ``ZOOptimizer``."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
from torch import nn

import zoattack.optim
from zoattack import QueryBudgetExceeded
from zoattack.optim import LIZO, R_AdaZO, ZO_SignSGD, ZOOptimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def all_faces(cls=ZOOptimizer) -> list[type[ZOOptimizer]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(all_faces(sub))
    return out


FACES = all_faces()
FACE_IDS = [f.__name__ for f in FACES]


def tiny_model(seed: int = 0) -> nn.Module:
    """Two linear layers (four tensors), initialised without the global RNG."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def regression_data(seed: int = 1, n: int = 64, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.tanh(x @ torch.randn(d, 1, generator=g))
    return x, y


def test_faces_are_discovered():
    assert {LIZO, R_AdaZO, ZO_SignSGD} <= set(FACES)
    for face in FACES:
        assert face.rule_name in zoattack.optim.OPTIMIZERS


# ------------------------------------------------------------------------- README snippets
def test_radazo_readme_snippet_runs_unchanged_and_lowers_the_loss():
    torch.manual_seed(0)  # the snippet draws its start point from the global RNG
    # --- the R-AdaZO README example, with only the import path changed ---------------
    from zoattack.optim import R_AdaZO

    # Define a model or parameters to optimize
    param = torch.randn(10, requires_grad=True)

    # Define a closure function to compute the loss value
    def closure():
        # Example: a simple quadratic function
        return torch.sum(param**2)

    # Initialize the R-AdaZO optimizer
    optimizer = R_AdaZO([param], lr=0.001, betas=(0.9, 0.99), n_samples=10)

    start = closure().item()
    # Optimization loop
    num_steps = 100
    for step in range(num_steps):
        optimizer._reset_seeds()  # Reset perturbation seeds at the beginning of each step
        optimizer.zero_grad()  # Zero out gradients
        loss = closure()  # Compute loss
        optimizer.step(closure)  # Perform optimization step, passing the closure function
        if (step + 1) % 10 == 0:
            print(f"Step {step + 1}, Loss: {loss.item():.4f}")
    print(f"Optimized parameters: {param.data}")
    # ----------------------------------------------------------------------------------
    assert closure().item() < start
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.queries == num_steps * (10 + 1)  # K + 1 per step (shared f(x))


def test_radazo_without_reset_seeds_also_works():
    param = torch.linspace(-1.0, 1.0, 10).requires_grad_(True)
    optimizer = R_AdaZO([param], lr=0.01, betas=(0.9, 0.99), n_samples=10, seed=0)

    def closure():
        return torch.sum(param**2)

    start = closure().item()
    seen = set()
    for _ in range(100):
        optimizer.step(closure)
        seen.add(param.detach().clone().numpy().tobytes())
    assert closure().item() < 0.5 * start
    assert len(seen) == 100  # it keeps moving: directions are not frozen


def test_relizo_readme_snippet_runs_unchanged_and_lowers_the_loss():
    x_all, y_all = regression_data()
    lr = 0.1
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(4, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1, 4, generator=g))
        lin.bias.zero_()
    losses = {}

    # --- the ReLIZO README example, with only the import path and the "..." filled in --
    from functools import partial

    from zoattack.optim import LIZO

    def main():
        model = lin
        # Full batches: ReLIZO reuses past values, which is only sound for a deterministic
        # objective (with shuffled mini-batches reused values are stale; ESTIMATORS.md 3.7).
        dataloader = [(x_all, y_all)] * 40
        criterion = nn.MSELoss()
        parameters = model.parameters()
        optimizer = LIZO(
            parameters,
            lr,
            num_sample_per_step=8,
            reuse_distance_bound=2 * lr,
            max_reuse_rate=0.5,
            orthogonal_sample=False,
        )
        losses["start"] = criterion(model(x_all), y_all).item()

        # Training process
        def _closure(data, model=model, criterion=criterion):
            logits = model(data)
            loss = criterion(logits, label)
            return loss

        for data, label in dataloader:  # noqa: B007  (the ReLIZO README loop, verbatim)
            optimizer.zero_grad()
            optimizer.step(closure=partial(_closure, data))
        losses["end"] = criterion(model(x_all), y_all).item()
        losses["queries"] = optimizer.queries

    # ----------------------------------------------------------------------------------

    main()
    assert losses["end"] < 0.5 * losses["start"]
    assert 0 < losses["queries"] < 40 * (5 + 1)  # d = 5 caps n at 5 probes; reuse saves some


def test_lizo_two_groups_use_their_own_lr():
    """Same seed, same start: the first step's estimate is identical, so group 2's move
    must scale exactly with its lr while group 1's stays put."""
    x, y = regression_data()

    def run(lr2):
        model = tiny_model()
        groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": lr2}]
        opt = LIZO(groups, lr=0.05, num_sample_per_step=6, seed=3)
        start = [p.detach().clone() for p in model.parameters()]
        opt.step(functools.partial(lambda m, a, b: nn.functional.mse_loss(m(a), b), model, x, y))
        return [p.detach() - s for p, s in zip(model.parameters(), start)]

    base, doubled = run(0.05), run(0.1)
    assert len(base) == 4 and all(bool((m != 0).any()) for m in base)  # all tensors move
    for m_base, m_doubled in zip(base[:2], doubled[:2]):
        torch.testing.assert_close(m_doubled, m_base)
    for m_base, m_doubled in zip(base[2:], doubled[2:]):
        torch.testing.assert_close(m_doubled, 2 * m_base)


def test_lr_changes_between_steps_are_honoured():
    param = torch.linspace(-1.0, 1.0, 6).requires_grad_(True)
    opt = ZO_SignSGD([param], lr=0.1, seed=0)
    closure = lambda: (param**2).sum()  # noqa: E731
    for lr in (0.1, 0.01):
        for group in opt.param_groups:  # what an LR scheduler does
            group["lr"] = lr
        before = param.detach().clone()
        opt.step(closure)
        moved = (param.detach() - before).abs()
        torch.testing.assert_close(moved[moved > 0], torch.full_like(moved[moved > 0], lr))


# ---------------------------------------------------------------------- generic face tests
@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_every_face_lowers_a_quadratic(face):
    param = torch.linspace(-1.0, 1.0, 10).requires_grad_(True)
    opt = face([param], lr=0.05, seed=0)
    assert isinstance(opt, torch.optim.Optimizer)
    closure = lambda: torch.sum(param**2)  # noqa: E731
    start = closure().item()
    first = opt.step(closure)
    assert isinstance(first, torch.Tensor) and first.item() == pytest.approx(start)
    for _ in range(49):
        opt._reset_seeds()  # harmless whether or not it is called
        opt.zero_grad()
        opt.step(closure)
    assert closure().item() < 0.2 * start
    assert opt.queries > 0
    assert param.grad is None  # no graph, no backward: a pure zeroth-order step


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_every_face_optimises_several_tensors(face):
    x, y = regression_data()
    model = tiny_model()
    opt = face(model.parameters(), lr=0.02, seed=0)
    closure = functools.partial(lambda m: nn.functional.mse_loss(m(x), y), model)
    start_params = [p.detach().clone() for p in model.parameters()]
    start = closure().item()
    for _ in range(30):
        opt.step(closure)
    assert closure().item() < start
    assert all(not torch.equal(p.detach(), s) for p, s in zip(model.parameters(), start_params))


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_max_queries_is_a_hard_budget(face):
    def make(max_queries=None):
        param = torch.linspace(-1.0, 1.0, 8).requires_grad_(True)
        calls = []

        def closure():
            calls.append(1)
            return torch.sum(param**2)

        return param, closure, calls, face([param], lr=0.01, seed=0, max_queries=max_queries)

    _, closure, _, probe = make()
    probe.step(closure)
    per_step = probe.queries
    param, closure, calls, opt = make(max_queries=per_step + 1)
    opt.step(closure)
    assert opt.queries == len(calls) == per_step
    before = param.detach().clone()
    with pytest.raises(QueryBudgetExceeded):
        opt.step(closure)  # any second step needs more than one query
    assert opt.queries == len(calls) == per_step  # refused before evaluating anything
    assert torch.equal(param.detach(), before)  # and the parameters are untouched


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_state_dict_round_trip_is_bitwise(face):
    x, y = regression_data()

    def closure_for(model):
        return functools.partial(lambda m: nn.functional.mse_loss(m(x), y), model)

    model_a = tiny_model()
    opt_a = face(model_a.parameters(), lr=0.02, seed=0)
    for _ in range(3):
        opt_a.step(closure_for(model_a))
    saved = copy.deepcopy(opt_a.state_dict())
    saved_params = copy.deepcopy(model_a.state_dict())
    queries = opt_a.queries
    for _ in range(3):
        opt_a.step(closure_for(model_a))

    model_b = tiny_model(seed=5)
    model_b.load_state_dict(saved_params)
    opt_b = face(model_b.parameters(), lr=0.02, seed=123)  # different seed: state must win
    opt_b.load_state_dict(saved)
    assert opt_b.queries == queries
    for _ in range(3):
        opt_b.step(closure_for(model_b))
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_b.queries == opt_a.queries


@pytest.mark.parametrize("seeded", [True, False], ids=["seed", "os-entropy"])
@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_face_steps_never_touch_the_global_rng(face, seeded):
    param = torch.linspace(-1.0, 1.0, 6).requires_grad_(True)
    opt = face([param], lr=0.01, **({"seed": 0} if seeded else {}))
    before = torch.get_rng_state()
    for _ in range(3):
        opt.step(lambda: torch.sum(param**2))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_same_seed_identical_different_seed_differs(face):
    def run(seed):
        param = torch.linspace(-1.0, 1.0, 6).requires_grad_(True)
        opt = face([param], lr=0.01, seed=seed)
        for _ in range(3):
            opt.step(lambda: torch.sum(param**3))
        return param.detach().clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_step_needs_a_closure(face):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="closure"):
        face([param], lr=0.01).step()


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan")])
@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_bad_lr_is_rejected(face, lr):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        face([param], lr=lr)
    with pytest.raises(ValueError, match="lr"):  # also in a later param group
        face(
            [{"params": [param]}, {"params": [torch.zeros(2, requires_grad=True)], "lr": lr}],
            lr=0.1,
        )


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"betas": (1.0, 0.99)}, "betas"),
        ({"betas": (0.9, -0.5)}, "betas"),
        ({"eps": -1.0}, "eps"),
        ({"n_samples": 0}, "n_samples"),
        ({"mu": 0.0}, "mu"),
    ],
)
def test_radazo_face_checks_its_hyperparameters(kwargs, needle):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=needle):
        R_AdaZO([param], lr=0.01, **kwargs)


@pytest.mark.parametrize(
    "estimator_kwargs, needle",
    [
        # reported in the face's own argument names
        ({"num_samples": 0}, "n_samples|num_sample_per_step"),
        ({"mu": -1.0}, "mu|sample_norm"),
        ({"difference": "sideways"}, "difference"),
    ],
)
@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_every_face_checks_estimator_options_at_construction(face, estimator_kwargs, needle):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=needle):
        face([param], lr=0.01, estimator_kwargs=estimator_kwargs)
    with pytest.raises(KeyError, match="unknown estimator"):
        face([param], lr=0.01, estimator="no_such_estimator")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_reuse_rate": 1.0}, "max_reuse_rate"),
        ({"line_search_fn": "strong_wolfe"}, "line_search"),
        ({"num_sample_per_step": 0}, "num_sample_per_step"),
        ({"sample_norm": 0.0}, "sample_norm"),
        ({"orthogonal_sample": True, "max_reuse_rate": -0.1}, "max_reuse_rate"),
    ],
)
def test_lizo_face_checks_its_hyperparameters(kwargs, needle):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=needle):
        LIZO([param], lr=0.01, **kwargs)


def test_lizo_face_armijo_never_goes_uphill():
    param = torch.linspace(-1.0, 1.0, 8).requires_grad_(True)
    scale = torch.logspace(0, 2, 8)
    closure = lambda: torch.sum(scale * param**2)  # noqa: E731
    opt = LIZO([param], lr=0.5, line_search_fn="armijo", seed=0)
    values = [closure().item()]
    for _ in range(20):
        opt.step(closure)
        values.append(closure().item())
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert values[-1] < values[0]
