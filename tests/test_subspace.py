"""zoattack.subspace: search variables expanded to image size (full, tile:K, dct:K) and
coarse-to-fine schedules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.fft import dct

from zoattack.norms import NORMS, distance, inside, to_image
from zoattack.subspace import Subspace, SubspaceSchedule, dct_matrix

F64 = torch.float64
FAST = settings(max_examples=40, deadline=None)
SHAPE = (2, 12, 10)  # non-square on purpose: rows and columns use different DCT sizes
SPECS = ["full", "tile:1", "tile:4", "tile:5", "tile:10", "dct:1", "dct:3", "dct:10"]


def _rand(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def _tol(space: Subspace) -> float:
    """Exactness to expect in float64: the DCT basis is kept in float32 (orthonormal to about
    1e-7), tiles and the identity are exact."""
    return 1e-6 if space.spec.startswith("dct:") else 1e-12


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def _block_sizes(space: Subspace) -> torch.Tensor:
    """How many pixels each variable coordinate moves ``(1, *var_shape)``."""
    ones = torch.ones(1, *space.image_shape, dtype=F64)
    c, k, _ = space.var_shape
    idx = torch.arange(k * k, dtype=F64).view(1, 1, k, k)
    owner = torch.nn.functional.interpolate(idx, size=space.image_shape[1:], mode="nearest")
    counts = torch.bincount(owner.long().flatten(), minlength=k * k).to(F64)
    return (counts.view(1, 1, k, k) * ones[:, :1, :1, :1]).expand(1, c, k, k)


# ------------------------------------------------------------------------------ DCT matrix


@pytest.mark.parametrize("n", [1, 2, 7, 28])
def test_full_dct_matrix_is_orthonormal(n):
    m = dct_matrix(n, n, dtype=F64)
    torch.testing.assert_close(m @ m.T, torch.eye(n, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(m.T @ m, torch.eye(n, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("n", "k"), [(28, 7), (10, 3), (5, 1)])
def test_truncated_dct_rows_are_orthonormal(n, k):
    m = dct_matrix(n, k, dtype=F64)
    assert m.shape == (k, n)
    torch.testing.assert_close(m @ m.T, torch.eye(k, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(m[0], torch.full((n,), n**-0.5, dtype=F64))  # the DC row


def test_dct_matrix_is_scipys_orthonormal_dct_ii():
    x = _rand(0, 3, 16)
    want = torch.from_numpy(dct(x.numpy(), type=2, norm="ortho", axis=1))
    torch.testing.assert_close(x @ dct_matrix(16, 16, dtype=F64).T, want)


def test_dct_matrix_default_dtype_is_float32():
    assert dct_matrix(8, 4).dtype == torch.float32


# ------------------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    ("spec", "var_shape"),
    [("full", SHAPE), ("tile:4", (2, 4, 4)), ("dct:3", (2, 3, 3)), ("tile:10", (2, 10, 10))],
)
def test_shapes_and_dimension(spec, var_shape):
    space = Subspace(spec, SHAPE)
    assert space.var_shape == var_shape
    assert space.dim == var_shape[0] * var_shape[1] * var_shape[2]
    v = _rand(1, 3, *var_shape)
    assert space.expand(v).shape == (3, *SHAPE)
    assert space.restrict(_rand(2, 3, *SHAPE)).shape == (3, *var_shape)


@pytest.mark.parametrize(
    ("spec", "shape", "needle"),
    [
        ("tile:0", SHAPE, r"size K must be in \[1, 10\]"),
        ("dct:11", SHAPE, r"size K must be in \[1, 10\]"),
        ("tile:x", SHAPE, "full, tile:K or dct:K"),
        ("pca:3", SHAPE, "full, tile:K or dct:K"),
        ("", SHAPE, "full, tile:K or dct:K"),
        ("full", (12, 10), r"\(C, H, W\)"),
    ],
)
def test_bad_specs_are_value_errors(spec, shape, needle):
    with pytest.raises(ValueError, match=needle):
        Subspace(spec, shape)


# ------------------------------------------------------------------------------ expand / restrict


@pytest.mark.parametrize("spec", SPECS)
def test_expand_is_linear(spec):
    space = Subspace(spec, SHAPE)
    a, b = _rand(3, 2, *space.var_shape), _rand(4, 2, *space.var_shape)
    torch.testing.assert_close(
        space.expand(2.5 * a - b), 2.5 * space.expand(a) - space.expand(b), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("spec", [s for s in SPECS if s.startswith("dct")] + ["full"])
def test_dct_restrict_is_the_adjoint_of_expand(spec):
    # <E v, d> = <v, R d>: with orthonormal rows the restriction is exactly the transpose.
    space = Subspace(spec, SHAPE)
    v, d = _rand(5, 4, *space.var_shape), _rand(6, 4, *SHAPE)
    torch.testing.assert_close(_dot(space.expand(v), d), _dot(v, space.restrict(d)))


@pytest.mark.parametrize("spec", [s for s in SPECS if s.startswith("tile")])
def test_tile_restrict_is_the_adjoint_up_to_block_sizes(spec):
    # Block means: R = diag(1/|block|) E^T, also for uneven blocks (12x10 into 5x5 or 4x4).
    space = Subspace(spec, SHAPE)
    v, d = _rand(7, 4, *space.var_shape), _rand(8, 4, *SHAPE)
    weighted = space.restrict(d) * _block_sizes(space)
    torch.testing.assert_close(_dot(space.expand(v), d), _dot(v, weighted))


@pytest.mark.parametrize("spec", SPECS)
def test_restrict_inverts_expand(spec):
    space = Subspace(spec, SHAPE)
    v = _rand(9, 3, *space.var_shape)
    torch.testing.assert_close(space.restrict(space.expand(v)), v, atol=_tol(space), rtol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_expand_restrict_is_the_orthogonal_projection_onto_the_subspace(spec):
    space = Subspace(spec, SHAPE)
    d = _rand(10, 3, *SHAPE)
    p = space.expand(space.restrict(d))
    torch.testing.assert_close(space.expand(space.restrict(p)), p, atol=_tol(space), rtol=0)
    # The residual is orthogonal to everything the subspace can express.
    v = _rand(11, 3, *space.var_shape)
    torch.testing.assert_close(
        _dot(d - p, space.expand(v)),
        torch.zeros(3, dtype=F64),
        atol=max(1e-10, 10 * _tol(space)),  # a sum over 240 pixels
        rtol=0,
    )


@pytest.mark.parametrize("spec", [s for s in SPECS if s.startswith("tile")] + ["full"])
def test_tile_expansion_preserves_linf(spec):
    space = Subspace(spec, SHAPE)
    v = _rand(12, 5, *space.var_shape)
    torch.testing.assert_close(space.expand(v).flatten(1).abs().amax(1), v.flatten(1).abs().amax(1))


@pytest.mark.parametrize("spec", [s for s in SPECS if s.startswith("dct")] + ["full"])
def test_dct_expansion_preserves_l2(spec):
    space = Subspace(spec, SHAPE)
    v = _rand(13, 5, *space.var_shape)
    torch.testing.assert_close(space.expand(v).flatten(1).norm(dim=1), v.flatten(1).norm(dim=1))


def test_dct_1_is_a_constant_per_channel():
    space = Subspace("dct:1", SHAPE)
    e = space.expand(_rand(14, 2, *space.var_shape))
    assert torch.allclose(e, e[:, :, :1, :1].expand_as(e))


def test_refining_a_tiling_keeps_the_perturbation():
    # tile:7 -> tile:14 on 28x28: every coarse block is four fine ones, so the switch the
    # attack loop makes (restrict the current expansion) loses nothing.
    coarse, fine = Subspace("tile:7", (1, 28, 28)), Subspace("tile:14", (1, 28, 28))
    delta = coarse.expand(_rand(15, 2, *coarse.var_shape))
    torch.testing.assert_close(fine.expand(fine.restrict(delta)), delta, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "k, hw",
    [
        (k, hw)
        for hw in [(28, 28), (32, 32), (96, 96), (224, 224), (30, 17)]
        for k in [1, 3, 7, 14, 16, 28]
        if k <= min(hw)
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_tile_expansion_is_nearest_interpolation_bit_for_bit(k, hw, dtype):
    # Tiles expand through cached per-axis index maps (row gathers), not F.interpolate: the
    # same pixels must come out, for sizes K divides and sizes it does not (7, 14 into 32, 96).
    h, w = hw
    space = Subspace(f"tile:{k}", (3, h, w))
    v = _rand(k + h, 5, *space.var_shape).to(dtype)
    want = torch.nn.functional.interpolate(v, size=hw, mode="nearest")
    assert torch.equal(space.expand(v), want)
    # With autograd the interpolation itself runs (its backward feeds the surrogate prior).
    var = v.clone().requires_grad_(True)
    got = space.expand(var)
    assert torch.equal(got.detach(), want) and got.grad_fn is not None


def test_expand_follows_the_variables_dtype():
    space = Subspace("dct:3", SHAPE)
    assert space.expand(torch.zeros(1, *space.var_shape)).dtype == torch.float32
    assert space.expand(torch.zeros(1, *space.var_shape, dtype=F64)).dtype == F64


# ------------------------------------------------------------------------------ project


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    spec=st.sampled_from(SPECS),
    norm=st.sampled_from(NORMS),
    eps=st.floats(1e-3, 0.9),
    scale=st.floats(1e-3, 20.0),
)
def test_projected_variables_expand_into_the_ball_and_clip_into_the_box(
    seed, spec, norm, eps, scale
):
    space = Subspace(spec, SHAPE)
    v = space.project(_rand(seed, 4, *space.var_shape, scale=scale), norm, eps)
    delta = space.expand(v)
    assert bool((distance(delta, torch.zeros_like(delta), norm) <= eps * (1 + 1e-9)).all())
    x0 = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x = to_image(x0, delta, norm, eps)
    assert bool(inside(x, x0, norm, eps, tol=1e-9).all())
    # Already feasible: projecting again changes nothing (beyond rounding).
    torch.testing.assert_close(space.project(v, norm, eps), v, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("norm", NORMS)
def test_project_leaves_feasible_variables_alone(spec, norm):
    space = Subspace(spec, SHAPE)
    v = _rand(16, 3, *space.var_shape)
    size = distance(space.expand(v), torch.zeros(3, *SHAPE, dtype=F64), norm)
    inner = v * (0.2 / size).view(-1, 1, 1, 1)  # expansions at 0.2 < eps
    assert torch.equal(space.project(inner, norm, 0.5), inner)


def test_linf_on_tiles_is_the_exact_clamp():
    space = Subspace("tile:4", SHAPE)
    v = _rand(17, 2, *space.var_shape)
    assert torch.equal(space.project(v, "linf", 0.1), v.clamp(-0.1, 0.1))


# ------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize(
    ("spec", "switch_at"),
    [
        ("full", []),
        ("tile:4>full", [300]),
        ("tile:2>tile:5>full", [150, 400]),
        ("tile:1>tile:2>tile:5>full", [150, 300, 600]),
        ("tile:2@10>tile:5@10>full", [10, 10]),
        (" tile:2@7 > full ", [7]),
    ],
)
def test_schedule_switch_points(spec, switch_at):
    sched = SubspaceSchedule(spec, SHAPE, budget=1000)
    assert sched.switch_at == switch_at
    assert len(sched.spaces) == len(switch_at) + 1
    assert sched.spaces[-1].spec in ("full",)


def test_schedule_stage_follows_queries_spent():
    sched = SubspaceSchedule("tile:2>tile:5>full", SHAPE, budget=1000)
    got = [sched.stage(q) for q in (0, 149, 150, 399, 400, 10_000)]
    assert got == [0, 0, 1, 1, 2, 2]


def test_small_budgets_still_switch_after_one_query():
    assert SubspaceSchedule("tile:2>full", SHAPE, budget=2).switch_at == [1]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("tile:2>>full", "empty stage"),
        ("tile:2>", "empty stage"),
        ("tile:2@x>full", "switch point must be a query count"),
        ("tile:2>full@5", "last stage"),
        ("tile:2@50>tile:5@10>full", "must not decrease"),
        ("tile:2@0>full", "must not decrease and must be >= 1"),
        ("tile:2>pca:3", "full, tile:K or dct:K"),
    ],
)
def test_bad_schedules_are_value_errors(spec, needle):
    with pytest.raises(ValueError, match=needle):
        SubspaceSchedule(spec, SHAPE, budget=1000)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["full", "tile", "dct"]),
    k=st.integers(1, 32),
    norm=st.sampled_from(NORMS),
    eps=st.floats(1e-4, 0.99),
    scale=st.floats(1e-4, 100.0),
)
def test_subspace_invariants_exhaustively(seed, kind, k, norm, eps, scale):
    """The fast tests' invariants over many sizes on a CIFAR-shaped input (run with -m slow):
    restrict inverts expand, the projection lands in the ball, the queried image in the box."""
    space = Subspace("full" if kind == "full" else f"{kind}:{k}", (3, 32, 32))
    v = _rand(seed, 2, *space.var_shape, scale=scale)
    torch.testing.assert_close(
        space.restrict(space.expand(v)), v, atol=_tol(space) * max(1.0, scale), rtol=1e-6
    )
    delta = space.expand(space.project(v, norm, eps))
    assert bool((distance(delta, torch.zeros_like(delta), norm) <= eps * (1 + 1e-9)).all())
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert bool(inside(to_image(x0, delta, norm, eps), x0, norm, eps, tol=1e-9).all())
