"""zoattack.norms: the threat model every attack is checked against (balls, box, distances)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoattack.norms import NORMS, check_norm, distance, inside, project, to_image

F64 = torch.float64
FAST = settings(max_examples=60, deadline=None)


def _rand(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=F64)


# ------------------------------------------------------------------------------ check_norm


@pytest.mark.parametrize(("given_", "want"), [("linf", "linf"), ("LInf", "linf"), ("L2", "l2")])
def test_check_norm_canonical_name(given_, want):
    assert check_norm(given_, 0.5) == want


@pytest.mark.parametrize(
    ("norm", "eps", "needle"),
    [
        ("l1", 0.1, "norm must be linf or l2"),
        ("", 0.1, "norm must be linf or l2"),
        ("l2", 0.0, "eps must be"),
        ("l2", -1.0, "eps must be"),
        ("l2", math.nan, "eps must be"),
        ("l2", math.inf, "eps must be"),
        ("linf", 1.0, "whole [0,1] image range"),
        ("linf", 3.0, "whole [0,1] image range"),
    ],
)
def test_check_norm_rejects(norm, eps, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        check_norm(norm, eps)


def test_l2_radius_above_one_is_a_valid_ball():
    # An L2 ball of radius 3 does not cover a 28x28 image: it must stay allowed.
    assert check_norm("l2", 3.0) == "l2"


# ------------------------------------------------------------------------------ project


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(1e-3, 10.0),
    scale=st.floats(1e-3, 100.0),
    norm=st.sampled_from(NORMS),
)
def test_project_lands_in_the_ball_and_is_idempotent(seed, eps, scale, norm):
    delta = _rand(seed, 5, 3, 4, 4, scale=scale)
    p = project(delta, norm, eps)
    assert p.shape == delta.shape and p.dtype == delta.dtype
    size = distance(p, torch.zeros_like(p), norm)
    assert bool((size <= eps * (1 + 1e-12)).all())
    torch.testing.assert_close(project(p, norm, eps), p, rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_project_leaves_points_inside_alone(norm):
    delta = _rand(1, 6, 1, 5, 5)
    size = distance(delta, torch.zeros_like(delta), norm)
    inner = delta * (0.5 / size).view(-1, 1, 1, 1)  # every row at half the radius
    assert torch.equal(project(inner, norm, 1.0), inner)


def test_l2_projection_is_the_radial_rescale():
    delta = _rand(2, 4, 2, 3, 3)
    p = project(delta, "l2", 0.25)
    norms = p.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.25))
    # Same direction: the projection onto a ball centred at 0 moves along the ray.
    cos = (p.flatten(1) * delta.flatten(1)).sum(1) / (norms * delta.flatten(1).norm(dim=1))
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_linf_projection_is_the_coordinatewise_clamp():
    delta = _rand(3, 4, 3, 2, 2)
    assert torch.equal(project(delta, "linf", 0.3), delta.clamp(-0.3, 0.3))


def test_project_zero_perturbation_stays_zero_and_finite():
    zero = torch.zeros(3, 1, 4, 4, dtype=F64)
    for norm in NORMS:
        p = project(zero, norm, 0.1)
        assert torch.equal(p, zero)


@FAST
@given(seed=st.integers(0, 2**31 - 1), norm=st.sampled_from(NORMS))
def test_project_is_the_closest_point_of_the_ball(seed, norm):
    # Euclidean projection: no other point of the ball is closer to delta.
    delta = _rand(seed, 1, 1, 3, 3, scale=2.0)
    p = project(delta, norm, 0.5)
    others = project(_rand(seed + 1, 64, 1, 3, 3, scale=2.0), norm, 0.5)
    best = (p - delta).flatten(1).norm(dim=1)
    rest = (others - delta).flatten(1).norm(dim=1)
    assert bool((best <= rest + 1e-12).all())


# ------------------------------------------------------------------------------ distance / inside


def test_distance_matches_the_definitions_in_float64():
    x0 = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    diff = (x - x0).double().flatten(1)
    d_inf, d_2 = distance(x, x0, "linf"), distance(x, x0, "l2")
    assert d_inf.dtype == F64 and d_2.dtype == F64 and d_inf.shape == (4,)
    torch.testing.assert_close(d_inf, diff.abs().amax(1))
    torch.testing.assert_close(d_2, torch.linalg.vector_norm(diff, dim=1))
    assert torch.equal(distance(x0, x0, "l2"), torch.zeros(4, dtype=F64))


def test_inside_checks_the_ball_and_the_box():
    x0 = torch.full((1, 1, 2, 2), 0.5)
    ok = x0 + 0.1
    too_far = x0 + 0.3
    out_of_box = x0.clone()
    out_of_box[0, 0, 0, 0] = 1.05  # 0.55 from x0 in Linf, but outside [0, 1]
    below = x0.clone()
    below[0, 0, 1, 1] = -0.01
    x = torch.cat([ok, too_far, out_of_box, below])
    got = inside(x, x0.expand(4, -1, -1, -1), "linf", 0.6)
    assert got.tolist() == [True, True, False, False]
    assert inside(x[:2], x0.expand(2, -1, -1, -1), "linf", 0.2).tolist() == [True, False]


def test_inside_tolerates_float_rounding_only():
    x0 = torch.zeros(1, 1, 1, 4, dtype=F64) + 0.5
    eps = 0.25
    on_edge = x0 + eps * (1 + 1e-7)  # rounding-sized excess: accepted
    over = x0 + eps * 1.01  # 1% over: rejected
    assert inside(on_edge, x0, "linf", eps).item()
    assert not inside(over, x0, "linf", eps).item()


# ------------------------------------------------------------------------------ to_image


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(1e-3, 5.0),
    scale=st.floats(1e-3, 50.0),
    norm=st.sampled_from(NORMS),
)
def test_to_image_stays_in_the_box_and_the_ball(seed, eps, scale, norm):
    if norm == "linf":
        eps = min(eps, 0.99)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(3, 1, 6, 6, generator=g, dtype=F64)
    x0[0] = 0.0  # images on the box's faces are where clipping matters
    x0[1] = 1.0
    x = to_image(x0, _rand(seed, 3, 1, 6, 6, scale=scale), norm, eps)
    assert bool(((x >= 0) & (x <= 1)).all())
    assert bool(inside(x, x0, norm, eps, tol=1e-9).all())


def test_to_image_of_no_perturbation_is_the_clean_image():
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    for norm in NORMS:
        assert torch.equal(to_image(x0, torch.zeros_like(x0), norm, 0.5), x0)
