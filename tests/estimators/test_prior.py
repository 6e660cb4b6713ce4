"""P-RGF (``prior``): lambda* against the paper's criterion, the estimate's expectation on a
quadratic with a known surrogate gradient, lambda estimated from the queries themselves, the
query ledger (the surrogate is never charged), flat priors and every rule using it."""

from __future__ import annotations

import math

import pytest
import torch

from zoattack import make_generator
from zoattack.estimators import create_estimator
from zoattack.estimators.prior import optimal_lambda
from zoattack.objective import WithSurrogate
from zoattack.optim import create_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def criterion(lam: torch.Tensor, a2: float, d: int, q: int) -> torch.Tensor:
    """``(E[g]^T grad)^2 / E||g||^2`` for unit ``||grad||`` (the quantity P-RGF maximises),
    written out for ``u = sqrt(lam) v + sqrt(1-lam) w``, ``w`` uniform on v's complement."""
    n = d - 1
    m = lam * a2 + (1 - lam) * (1 - a2) / n
    second = m / q + (1 - 1 / q) * (lam**2 * a2 + (1 - lam) ** 2 * (1 - a2) / n**2)
    return m * m / second


@pytest.mark.parametrize("d", [20, 784])
@pytest.mark.parametrize("q", [1, 2, 10, 50])
def test_closed_form_lambda_maximises_the_papers_criterion(d, q):
    grid = torch.linspace(0, 1, 20001, dtype=F64)
    alphas = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0], dtype=F64)
    lam = optimal_lambda(alphas**2, d, q)
    for a, got in zip(alphas.tolist(), lam.tolist(), strict=True):
        vals = criterion(grid, a * a, d, q)
        best = float(torch.nan_to_num(vals, nan=0.0).max())
        # The closed form attains the grid maximum (to the grid's resolution).
        assert float(criterion(torch.tensor(got, dtype=F64), a * a, d, q)) >= best * (1 - 1e-6)
    assert lam[0] == 0 and lam[-1] == 1  # useless prior ignored, perfect prior alone


def quadratic_setup(zo, d, n, cos, seed=0):
    fn = zo.Quadratic(d, seed=seed)
    x = zo.points(d, seed=3).expand(n, d).clone()
    g = fn.grad(x[:1])[0]
    # A surrogate gradient at a known angle to the true one.
    r = torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=F64)
    r -= (r @ g) / (g @ g) * g
    v = cos * g / g.norm() + math.sqrt(1 - cos**2) * r / r.norm()
    return fn, x, g, v


def test_expectation_matches_the_analytic_prgf_direction(zo):
    """Conditioned on each example's lambda (drawn from its own norm probes), the mean of
    ``g / c`` is ``lam (v^T grad) v + (1-lam)/(d-1) P grad`` plus the forward difference's
    curvature terms, all known in closed form on a quadratic."""
    d, n, q, mu = 12, 6000, 4, 1e-3
    fn, x, g, v = quadratic_setup(zo, d, n, cos=0.45)
    calls = []

    def prior(points, owner):
        calls.append(len(points))
        return v.expand(len(points), d).clone()

    obj, bb = zo.objective_for(fn)
    est = create_estimator("prior", num_samples=q, mu=mu)
    res = est.estimate(WithSurrogate(obj, prior), x, generator=make_generator(5))
    lam = est.last_lambda
    assert lam is not None and est.last_alpha is not None
    assert float((lam > 0).double().mean()) > 0.05 and float((lam < 1).double().mean()) > 0.5
    a2 = est.last_alpha.pow(2)
    c = 1 / (lam * a2 + (1 - lam) * (1 - a2) / (d - 1))
    vh = v / v.norm()
    proj = torch.eye(d, dtype=F64) - torch.outer(vh, vh)
    a_mat = fn.A
    pg = proj @ g
    # E[(u^T A u) u] for u = a v + b w: odd moments of w vanish.
    tr = torch.trace(proj @ a_mat @ proj) / (d - 1)
    pav = proj @ a_mat @ vh / (d - 1)
    s = lam.sqrt().unsqueeze(1)
    b2 = (1 - lam).unsqueeze(1)
    expected = (
        lam.unsqueeze(1) * (vh @ g) * vh
        + b2 / (d - 1) * pg
        + mu / 2 * (s**3 * (vh @ a_mat @ vh) * vh + 2 * s * b2 * pav + s * b2 * tr * vh)
    )
    # Examples whose lambda is 1 use the prior's own difference (no random part).
    single = (lam >= 1).unsqueeze(1)
    dv = (fn(x[:1] + mu * vh) - fn(x[:1])) / mu
    expected = torch.where(single, dv * vh, expected)
    diff = (res.grad / c.unsqueeze(1) - expected).mean(0)
    scale = expected.mean(0).norm()
    assert float(diff.norm() / scale) < 0.05, float(diff.norm() / scale)
    # A single draw is far noisier, so the check above was not trivial.
    single_err = ((res.grad / c.unsqueeze(1) - expected).norm(dim=1) / scale).median()
    assert float(single_err) > 0.3
    assert calls == [n]  # one surrogate call, for every example


def test_lambda_comes_from_the_queries_as_in_the_paper(zo):
    """alpha = D_v / ||grad||, with D_v the prior's forward difference and ||grad||^2 =
    d/S sum_s D_s^2 from the norm probes: rebuilt here from the points the black box saw."""
    d, n, q, s_norm, mu = 16, 5, 6, 8, 1e-4
    fn, x, g, v = quadratic_setup(zo, d, n, cos=0.6)
    rec = zo.Recorder(fn)
    obj, _ = zo.objective_for(rec)
    est = create_estimator("prior", num_samples=q, mu=mu, norm_samples=s_norm)
    wrapped = WithSurrogate(obj, lambda p, o: v.expand(len(p), d).clone())
    est.estimate(wrapped, x, generator=make_generator(1))
    first = rec.batches[0].reshape(n, 2 + s_norm, d)  # f(x), the prior's probe, S probes
    f = fn(first.reshape(-1, d)).reshape(n, 2 + s_norm)
    dv = (f[:, 1] - f[:, 0]) / mu
    gn2 = d * ((f[:, 2:] - f[:, :1]) / mu).pow(2).mean(1)
    alpha2 = (dv * dv / gn2).clamp(max=1.0)
    torch.testing.assert_close(est.last_alpha.pow(2), alpha2, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(est.last_lambda, optimal_lambda(alpha2, d, q))
    # The prior's probe is exactly x + mu v/||v||.
    torch.testing.assert_close(first[:, 1], x + mu * v / v.norm(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm_estimate", ["pooled", "fresh"])
@pytest.mark.parametrize("difference", ["forward", "central"])
def test_ledger_is_exact_and_the_surrogate_is_never_charged(zo, norm_estimate, difference):
    d, n, q, s_norm, every = 10, 3, 5, 4, 3
    fn, x, _, v = quadratic_setup(zo, d, n, cos=0.3)
    obj, bb = zo.objective_for(fn)
    surrogate_calls = []

    def prior(p, o):
        surrogate_calls.append(len(p))
        return v.expand(len(p), d).clone() + 0.01 * p  # depends on the point

    wrapped = WithSurrogate(obj, prior)
    est = create_estimator(
        "prior",
        num_samples=q,
        mu=1e-3,
        norm_samples=s_norm,
        norm_every=every,
        norm_estimate=norm_estimate,
        difference=difference,
    )
    per = 1 if difference == "forward" else 2
    gen = make_generator(0)
    total = torch.zeros(n, dtype=torch.int64)
    age = torch.zeros(n, dtype=torch.int64)  # pooled: calls since the pool gained samples
    for step in range(9):
        before = bb.queries.clone() if len(bb.queries) else torch.zeros(n, dtype=torch.int64)
        fx = None if step == 0 else fn(x)
        res = est.estimate(wrapped, x, generator=gen, fx=fx)
        spent = bb.queries - before
        assert res.queries.tolist() == spent.tolist()
        lam = est.last_lambda
        lam_one = (lam >= 1).long()
        if norm_estimate == "fresh":
            refresh = torch.full((n,), step % every == 0)
        else:
            refresh = (age >= every) | (step == 0)
            age = torch.where(refresh | (lam <= 0.9), 0, age + 1)
        base = 1 if step == 0 else 0
        expected = base + per * (1 + s_norm * refresh.long() + q * (1 - lam_one))
        assert res.queries.tolist() == expected.tolist()
        total += res.queries
    assert bb.queries.tolist() == total.tolist()
    assert est.queries_per_call(d) == 1 + per * (1 + s_norm + q)
    assert surrogate_calls == [n] * 9  # computed every call, charged never


def test_pooled_norm_is_unbiased_and_beats_fresh_probes(zo):
    """Every mixed probe's complement part gives an unbiased ||grad||^2 sample: on a linear
    function (exact differences) the pooled estimate stays unbiased and, after a few calls,
    is far less noisy than S fresh probes at the same query cost per call or less."""
    d, n, q = 40, 400, 10
    fn = zo.Linear(d, seed=1)
    x = zo.points(d, seed=2).expand(n, d).clone()
    g = fn.grad(x[:1])[0]
    r = torch.randn(d, generator=torch.Generator().manual_seed(4), dtype=F64)
    r -= (r @ g) / (g @ g) * g
    v = 0.3 * g / g.norm() + math.sqrt(1 - 0.09) * r / r.norm()  # mid-range lambda
    errs = {}
    for mode in ("pooled", "fresh"):
        obj, bb = zo.objective_for(fn)
        wrapped = WithSurrogate(obj, lambda p, o: v.expand(len(p), d).clone())
        est = create_estimator("prior", num_samples=q, mu=1e-3, norm_estimate=mode)
        gen = make_generator(0)
        for _ in range(6):
            est.estimate(wrapped, x, generator=gen, fx=fn(x))
            lam = est.last_lambda
        assert est.last_gnorm2 is not None
        ratio = est.last_gnorm2 / g.pow(2).sum()
        if mode == "pooled":
            assert float(ratio.mean()) == pytest.approx(1.0, abs=0.08)  # unbiased
            assert bool(((lam > 0) & (lam < 1)).float().mean() > 0.5)  # mixed probes pooled
            assert int(bb.queries.max()) <= 6 * (1 + q) + 10 + 1  # S probes once only
        errs[mode] = float(ratio.log().abs().median())
    assert errs["pooled"] < 0.6 * errs["fresh"], errs


def test_central_difference_reads_the_prior_exactly_on_a_quadratic(zo):
    """Central differences are exact on a quadratic: alpha * ||grad|| is v^T grad exactly."""
    d, n = 12, 4
    fn, x, g, v = quadratic_setup(zo, d, n, cos=0.5)
    obj, _ = zo.objective_for(fn)
    wrapped = WithSurrogate(obj, lambda p, o: v.expand(len(p), d).clone())
    est = create_estimator("prior", num_samples=4, mu=0.1, difference="central")
    est.estimate(wrapped, x, generator=make_generator(0))
    assert est.last_alpha is not None and est.last_gnorm2 is not None
    got = est.last_alpha * est.last_gnorm2.sqrt()
    torch.testing.assert_close(got, (v / v.norm() @ g).expand(n), rtol=1e-8, atol=1e-8)


def test_flat_prior_is_the_sphere_rge_and_no_surrogate_is_refused(zo):
    d, n, q = 8, 4, 5
    fn, x, _, _ = quadratic_setup(zo, d, n, cos=0.5)
    obj, bb = zo.objective_for(fn)
    est = create_estimator("prior", num_samples=q, mu=1e-4)
    res = est.estimate(
        WithSurrogate(obj, lambda p, o: torch.zeros_like(p)), x, generator=make_generator(2)
    )
    assert res.queries.tolist() == [q + 1] * n  # no prior probe, no norm probes
    sphere = create_estimator("sphere", num_samples=q, mu=1e-4)
    # The same directions as the sphere RGE would draw after the (unused) norm draw.
    assert res.grad.shape == x.shape and bool(torch.isfinite(res.grad).all())
    ref = sphere.estimate(obj, x, generator=make_generator(2)).grad
    assert res.grad.norm(dim=1).mean() == pytest.approx(float(ref.norm(dim=1).mean()), rel=0.5)
    with pytest.raises(ValueError, match="surrogate"):
        est.estimate(obj, x, generator=make_generator(0))


def test_same_seed_identical_and_global_rng_untouched(zo):
    d, n = 10, 3
    fn, x, _, v = quadratic_setup(zo, d, n, cos=0.4)
    obj, _ = zo.objective_for(fn)
    wrapped = WithSurrogate(obj, lambda p, o: v.expand(len(p), d).clone())
    before = torch.get_rng_state()

    def grad(seed):
        est = create_estimator("prior", num_samples=4)
        return est.estimate(wrapped, x, generator=make_generator(seed)).grad

    assert torch.equal(grad(3), grad(3)) and not torch.equal(grad(3), grad(4))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"norm_samples": 0}, "norm_samples"),
        ({"norm_every": 1.5}, "norm_every"),
        ({"difference": "backward"}, "difference"),
        ({"norm_estimate": "cached"}, "norm_estimate"),
        ({"norm_decay": 1.0}, "norm_decay"),
        ({"lambda_cap": 0.0}, "lambda_cap"),
        ({"mu": 0.0}, "mu"),
    ],
)
def test_invalid_hyperparameters(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_estimator("prior", **kwargs)


@pytest.mark.parametrize("rule", ["lizo", "radazo", "zo_adamm", "zo_sgd", "zo_signsgd"])
def test_every_rule_descends_with_a_good_prior(zo, rule):
    """Every gradient rule accepts the estimator; with a prior close to the true gradient a
    few steps lower a quadratic."""
    d, n = 20, 2
    fn = zo.Quadratic(d)
    obj, bb = zo.objective_for(fn)

    def prior(p, o):  # the true gradient, slightly perturbed: a good surrogate
        return fn.grad(p) + 0.05 * torch.ones_like(p)

    wrapped = WithSurrogate(obj, prior)
    lr = {"lizo": 0.05, "zo_sgd": 0.05, "zo_signsgd": 0.02}.get(rule, 0.05)
    opt = create_optimizer(rule, lr=lr, estimator="prior", mu=1e-4)
    assert opt.estimator is not None and opt.estimator.name == "prior"
    x = zo.points(d, n=n, seed=9)
    f_start = fn(x)
    gen = make_generator(0)
    spent = torch.zeros(n, dtype=torch.int64)
    for _ in range(15):
        res = opt.step(wrapped, x, generator=gen)
        spent += res.queries
        x = res.x_next
    assert bool((fn(x) < f_start).all()), (fn(x), f_start)
    assert bb.queries.tolist() == spent.tolist()


def test_feasible_prior_drops_only_what_the_projection_would_undo():
    from zoattack.objective import feasible_prior

    eps = 1.0
    # L2: on the sphere with -grad pointing out, the radial part goes; inside, or pointing
    # in, the prior is untouched
    var = torch.tensor([[0.6, 0.8, 0.0], [0.3, 0.4, 0.0], [0.6, 0.8, 0.0]], dtype=F64)
    grad = torch.tensor([[-1.0, -1.0, 1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    out = feasible_prior(grad, var, var, "l2", eps, coordinatewise=True)
    assert float(out[0] @ var[0]) == pytest.approx(0.0, abs=1e-12)  # tangent
    torch.testing.assert_close(out[0] - grad[0], -(grad[0] @ var[0]) * var[0])
    torch.testing.assert_close(out[1:], grad[1:])
    # Linf (clamp): coordinates at +-eps whose descent direction points out are zeroed
    var = torch.tensor([[1.0, -1.0, 0.5, 1.0]], dtype=F64)
    grad = torch.tensor([[-2.0, 3.0, -4.0, 5.0]], dtype=F64)
    out = feasible_prior(grad, var, var, "linf", eps, coordinatewise=True)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, -4.0, 5.0]], dtype=F64))
