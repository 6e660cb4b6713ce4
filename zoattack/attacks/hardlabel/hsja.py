"""HopSkipJumpAttack: boundary-normal estimates from signs, geometric steps, bisection."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoattack.attacks.hardlabel.base import (
    DECISION_ATTACKS,
    DecisionAttack,
    Run,
    check_float,
    check_int,
)
from zoattack.attacks.hardlabel.boundary import (
    BoundaryDistance,
    line_search,
    unit_directions,
)
from zoattack.norms import distance
from zoattack.subspace import Subspace


@DECISION_ATTACKS.register(
    "hsja",
    description="HopSkipJump: sign-based boundary normal, geometric step, binary search "
    "(Chen, Jordan & Wainwright 2020)",
    aliases=("hopskipjump",),
    flags={"needs": "labels", "norms": ("l2", "linf")},
)
class HSJAAttack(DecisionAttack):
    """HopSkipJumpAttack (Chen, Jordan & Wainwright, IEEE S&P 2020), L2 and Linf, batched.

    State: a boundary point ``x_t`` (adversarial) at distance ``dist`` from ``x0``. Step t:

    - estimate the boundary normal at ``x_t``: ``B_t = min(init_evals sqrt(t), max_evals)``
      unit directions ``u_b`` (Gaussian for L2, uniform in [-1, 1]^d for Linf, then
      normalised), one question each at ``clip(x_t + delta u_b)``; with ``phi_b = +-1`` the
      answers, ``v = mean((phi_b - mean phi) u_b)`` (plain ``+-mean u`` when all agree), then
      ``v/||v||_2`` (L2) or ``sign(v)`` (Linf);
      ``delta = sqrt(d) theta dist`` (L2) or ``d theta dist`` (Linf), ``theta = gamma/d^1.5``
      (L2) or ``gamma/d^2`` (Linf); ``delta = 0.1`` at t = 1;
    - geometric step: ``xi = dist/sqrt(t)``, halved until ``clip(x_t + xi v)`` is adversarial
      (at most ``max_geometric`` questions; none adversarial keeps ``x_t``);
    - bisection between ``x0`` and that point back to the boundary (L2: the segment; Linf:
      ``clip(x', x0 - r, x0 + r)`` over the radius ``r``) to relative tolerance ``theta``.

    ``subspace`` (``tile:K``, ``dct:K``) draws the ``u_b`` in a search subspace and expands
    them to pixels (QEBA, Li et al. CVPR 2020); ``full`` is the paper's attack.

    Defaults (ART/foolbox): ``init_evals=100``, ``max_evals=10000``, ``gamma=1.0``,
    ``max_geometric=10``, ``subspace="full"``; starts as OPT's (``n_init=10`` noise
    directions, or the ray towards ``x_init`` when targeted). ``B_t`` is cut to what each
    image's budget pays for, keeping one question for the step.
    Shapes: images ``(N, C, H, W)``.
    Query cost per step and image: ``B_t`` + 1-``max_geometric`` + ~log2(1/theta) bisections.
    """

    name = "hsja"

    def __init__(
        self,
        *,
        init_evals: int = 100,
        max_evals: int = 10000,
        gamma: float = 1.0,
        max_geometric: int = 10,
        subspace: str = "full",
        n_init: int = 10,
        max_init: int = 100,
    ) -> None:
        self.subspace = subspace
        self.init_evals = check_int("init_evals", init_evals)
        self.max_evals = check_int("max_evals", max_evals)
        self.gamma = check_float("gamma", gamma)
        self.max_geometric = check_int("max_geometric", max_geometric)
        self.n_init = check_int("n_init", n_init)
        self.max_init = max(check_int("max_init", max_init), self.n_init)

    def _attack(self, run: Run) -> None:
        oracle = run.oracle
        x0 = oracle.x0
        dev = x0.device
        norm = oracle.norm
        obj = BoundaryDistance(oracle)
        self._space = Subspace(self.subspace, tuple(x0.shape[1:]))
        ids, theta0, g0 = self.find_starts(run, obj, n_init=self.n_init, max_init=self.max_init)
        xb = x0.clone()
        ok = g0.isfinite()
        if bool(ok.any()):
            pts = obj.point_fn(obj.directions(theta0[ok]), ids[ok])
            xb[ids[ok]] = pts(torch.arange(int(ok.sum()), device=dev), g0[ok])
        d = x0[0].numel()
        theta_h = self.gamma / (d**1.5 if norm == "l2" else d**2)
        dist = distance(xb, x0, norm)
        t = 0
        while run.next_step(2):
            t += 1
            ids = run.ids()
            if t == 1:
                delta = torch.full((len(ids),), 0.1, dtype=torch.float64, device=dev)
            else:
                scale = math.sqrt(d) if norm == "l2" else d
                delta = scale * theta_h * dist[ids]
            v = self._normal(run, ids, xb, delta, t)
            xb_new = self._geometric(run, ids, xb, v, dist[ids] / math.sqrt(t))
            # a point that did not move is still on the boundary: no bisection to pay for
            moved = (xb_new != xb[ids]).flatten(1).any(dim=1)
            if bool(moved.any()):
                xb[ids[moved]] = self._bisect(run, ids[moved], xb_new[moved], theta_h)
            dist[ids] = distance(xb[ids], x0[ids], norm)

    def _normal(self, run: Run, ids: Tensor, xb: Tensor, delta: Tensor, t: int) -> Tensor:
        """The boundary-normal estimate at ``xb[ids]`` -> ``(M, C, H, W)``."""
        oracle = run.oracle
        dev = xb.device
        m = len(ids)
        b = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
        b_i = torch.clamp(oracle.remaining(ids).to(dev) - 1, min=0, max=b)
        keep = torch.arange(b, device=dev).unsqueeze(0) < b_i.unsqueeze(1)
        shape = xb.shape[1:]
        gen = run.generator
        var = self._space.var_shape
        if oracle.norm == "l2":
            rnd = torch.randn(m * b, *var, generator=gen, device=gen.device)
        else:
            rnd = torch.rand(m * b, *var, generator=gen, device=gen.device) * 2 - 1
        # sampled in the search subspace (QEBA's idea), then expanded to pixels
        rnd = self._space.expand(rnd.to(xb))
        rnd = unit_directions(rnd, "l2").view(m, b, *shape)
        base = xb[ids].unsqueeze(1)
        dl = delta.to(xb.dtype).view(m, 1, *[1] * len(shape))
        pts = (base + dl * rnd).clamp(0.0, 1.0)
        rnd = (pts - base) / dl.clamp_min(torch.finfo(xb.dtype).tiny)
        owner = ids.view(m, 1).expand(m, b)[keep]
        adv = oracle.ask(pts[keep], owner)
        phi = torch.zeros(m, b, dtype=xb.dtype, device=dev)
        phi[keep] = torch.where(adv, 1.0, -1.0).to(xb.dtype)
        cnt = b_i.clamp_min(1).to(xb.dtype)
        mean_phi = phi.sum(1) / cnt
        # all answers alike: the baseline would cancel everything, use +-mean(u) (ART #307)
        agree = mean_phi.abs() == 1.0
        centred = torch.where(keep, phi - mean_phi.view(m, 1), torch.zeros_like(phi))
        weights = torch.where(agree.view(m, 1), phi, centred)
        v = torch.einsum("mb,mb...->m...", weights, rnd) / cnt.view(m, *[1] * len(shape))
        if oracle.norm == "l2":
            return unit_directions(v, "l2")
        return v.sign()

    def _geometric(self, run: Run, ids: Tensor, xb: Tensor, v: Tensor, xi: Tensor) -> Tensor:
        """Largest ``xi 2^-j`` step along ``v`` that stays adversarial (``xb`` otherwise)."""
        oracle = run.oracle
        dev = xb.device
        out = xb[ids].clone()
        size = xi.clone()
        pending = torch.ones(len(ids), dtype=torch.bool, device=dev)
        shape = (-1, *[1] * (xb.dim() - 1))
        for _ in range(self.max_geometric):
            pending &= (oracle.remaining(ids) > 0).to(dev)
            rows = pending.nonzero().flatten()
            if not rows.numel():
                break
            cand = (xb[ids[rows]] + size[rows].to(xb.dtype).view(shape) * v[rows]).clamp(0, 1)
            adv = oracle.ask(cand, ids[rows])
            out[rows[adv]] = cand[adv]
            pending[rows[adv]] = False
            size[rows[~adv]] /= 2
        return out

    def _bisect(self, run: Run, ids: Tensor, xa: Tensor, tol: float) -> Tensor:
        """Back to the boundary between ``x0`` and the adversarial ``xa`` ``(M, C, H, W)``."""
        oracle = run.oracle
        x0 = oracle.x0.index_select(0, ids)
        delta = xa - x0
        norm = oracle.norm
        if norm == "l2":
            dirs = unit_directions(delta, "l2")

            def points(rows: Tensor, lam: Tensor) -> Tensor:
                step = lam.to(xa.dtype).view(-1, 1, 1, 1) * dirs[rows]
                return (x0[rows] + step).clamp(0.0, 1.0)

        else:

            def points(rows: Tensor, lam: Tensor) -> Tensor:
                r = lam.to(xa.dtype).view(-1, 1, 1, 1)
                return torch.minimum(torch.maximum(xa[rows], x0[rows] - r), x0[rows] + r)

        hi0 = distance(xa, x0, norm)
        lo0 = torch.zeros_like(hi0)
        hi, _ = line_search(
            oracle, points, ids, hi0, lo0=lo0, hi0=hi0, tol=max(tol, 1e-9), max_binary=60
        )
        rows = torch.arange(len(ids), device=xa.device)
        return points(rows, hi)
