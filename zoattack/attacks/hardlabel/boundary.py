"""Batched boundary searches and the OPT boundary-distance objective.

Every search here runs for many rows at once (rows of several images, several rows per
image): each round asks one membership question per unfinished row in one oracle call, and
a row whose image cannot pay for its next question stops where it is (its bracket is still
valid: ``hi`` was asked and answered adversarial).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zoattack.attacks.hardlabel.oracle import LabelOracle
from zoattack.subspace import Subspace

PointFn = Callable[[Tensor, Tensor], Tensor]
"""``point_fn(rows, lam)`` -> the points ``(R, C, H, W)`` at parameter ``lam`` ``(R,)``."""

_FIRST, _UP, _DOWN, _BIN, _DONE = 0, 1, 2, 3, 4


def line_search(
    oracle: LabelOracle,
    point_fn: PointFn,
    owner: Tensor,
    lam0: Tensor,
    *,
    adv0: Tensor | None = None,
    lo0: Tensor | None = None,
    hi0: Tensor | None = None,
    require_adv: bool = False,
    tol: float = 1e-3,
    abs_tol: float = 0.0,
    growth: float = 0.05,
    max_coarse: int = 10,
    max_binary: int = 30,
    lam_cap: float = float("inf"),
) -> tuple[Tensor, Tensor]:
    """The smallest adversarial ``lam`` along ``point_fn`` for each row, to relative ``tol``.

    Coarse phase from ``lam0``: if ``lam0`` is adversarial, step down through
    ``lam0 / (1 + growth 2^k)`` until a point is not (after ``max_coarse`` steps the lower
    end becomes 0: the clean image is not adversarial); else step up through
    ``lam0 (1 + growth 2^k)`` (capped at ``lam_cap``, where points stop changing) until one
    is. Then bisect until ``hi - lo <= max(tol * hi, abs_tol)`` or ``max_binary`` bisections.

    Args:
        owner: image of each row ``(R,)``; lam0: start ``(R,)`` float64.
        adv0: known answers at ``lam0`` (skips the first question), or None.
        lo0, hi0: a known bracket (lo not adversarial, hi adversarial): bisection only.
        require_adv: a row whose first question at ``lam0`` answers "no" gives up (inf)
            instead of searching upward: a one-query check of a candidate direction.

    Returns:
        ``(hi, probes)``: smallest adversarial ``lam`` found per row (inf where none) and
        questions asked per row (``int64``).
    """
    dev = lam0.device
    r = lam0.shape[0]
    lam0 = lam0.double().clamp(max=lam_cap)
    lo = torch.zeros(r, dtype=torch.float64, device=dev)
    hi = torch.full((r,), float("inf"), dtype=torch.float64, device=dev)
    mode = torch.full((r,), _FIRST, dtype=torch.int64, device=dev)
    k = torch.zeros(r, dtype=torch.int64, device=dev)
    nbin = torch.zeros(r, dtype=torch.int64, device=dev)
    probes = torch.zeros(r, dtype=torch.int64, device=dev)
    if hi0 is not None:
        lo = (lo0 if lo0 is not None else lo).double().clone()
        hi = hi0.double().clone()
        mode[:] = _BIN
    elif adv0 is not None:
        hi = torch.where(adv0, lam0, hi)
        lo = torch.where(adv0, lo, lam0)
        mode = torch.where(adv0, _DOWN, _UP)
    while True:
        width = torch.clamp(tol * hi, min=abs_tol)
        conv = (mode == _BIN) & ((hi - lo <= width) | (nbin >= max_binary))
        mode[conv] = _DONE
        rows = (mode != _DONE).nonzero().flatten()
        if not rows.numel():
            break
        fit = oracle.affordable(owner[rows])
        mode[rows[~fit]] = _DONE  # out of budget: keep the bracket reached so far
        rows = rows[fit]
        if not rows.numel():
            break
        m, kk = mode[rows], k[rows]
        factor = 1.0 + growth * torch.pow(2.0, kk.double())
        base = lam0[rows]
        lam = torch.where(
            m == _FIRST,
            base,
            torch.where(
                m == _UP,
                (base * factor).clamp(max=lam_cap),
                torch.where(m == _DOWN, base / factor, (lo[rows] + hi[rows]) / 2),
            ),
        )
        adv = oracle.ask(point_fn(rows, lam), owner[rows])
        probes[rows] += 1
        # answers: adversarial lowers hi, otherwise raises lo
        hi[rows] = torch.where(adv, torch.minimum(hi[rows], lam), hi[rows])
        lo[rows] = torch.where(adv, lo[rows], torch.maximum(lo[rows], lam))
        new = m.clone()
        first = m == _FIRST
        new[first & adv] = _DOWN
        new[first & ~adv] = _DONE if require_adv else _UP
        new[first & ~adv & (lam >= lam_cap)] = _DONE  # nothing further out to try
        up = m == _UP
        new[up & adv] = _BIN
        exhausted_up = up & ~adv & ((kk + 1 >= max_coarse) | (lam >= lam_cap))
        new[exhausted_up] = _DONE
        down = m == _DOWN
        new[down & ~adv] = _BIN
        exhausted_down = down & adv & (kk + 1 >= max_coarse)
        new[exhausted_down] = _BIN
        lo[rows[exhausted_down]] = 0.0
        k[rows] = torch.where((up & ~adv) | (down & adv), kk + 1, kk)
        nbin[rows] = nbin[rows] + (m == _BIN).long()
        mode[rows] = new
    return hi, probes


def unit_directions(delta: Tensor, norm: str) -> Tensor:
    """``delta / ||delta||`` per row in ``norm`` (zero rows stay zero)."""
    flat = delta.flatten(1)
    size = flat.norm(dim=1) if norm == "l2" else flat.abs().max(dim=1).values
    tiny = torch.finfo(delta.dtype).tiny
    return delta / size.clamp_min(tiny).view(-1, *[1] * (delta.dim() - 1))


def linf_saturate(saturate: float | None, norm: str) -> float | None:
    """``saturate`` for a run at ``norm``: it shapes Linf rays only (refused for L2)."""
    if saturate is not None and norm != "linf":
        raise ValueError("saturate shapes Linf rays only; drop it for L2")
    return saturate


def saturated_directions(delta: Tensor, saturate: float) -> Tensor:
    """Linf ray directions that spend the whole radius on the ``saturate`` share of the
    coordinates where ``|delta|`` is largest: ``clamp(delta / s, -1, 1)`` per row, ``s`` the
    row's ``(1 - saturate)`` quantile of ``|delta|``. Every row has Linf norm 1 (zero rows
    stay zero), so ``lam`` is still the Linf distance along it; ``saturate -> 0`` gives
    ``delta / ||delta||_inf`` (the paper's ray), ``saturate -> 1`` RayS's sign vectors."""
    flat = delta.flatten(1)
    mag = flat.abs()
    d = flat.shape[1]
    k = min(max(round((1.0 - saturate) * d), 1), d)
    s = mag.kthvalue(k, dim=1).values
    # a scale of 0 (a sparse delta) falls back to a tiny share of the largest entry
    top = mag.max(dim=1).values
    s = torch.maximum(s, top * 1e-6).clamp_min(torch.finfo(delta.dtype).tiny)
    return (flat / s.view(-1, 1)).clamp(-1.0, 1.0).view_as(delta)


def lam_cap(x0: Tensor, norm: str) -> float:
    """A ray from any point of [0, 1]^d stops changing once ``lam`` exceeds the box's
    diameter in ``norm``: sqrt(d) for L2, 1 for Linf."""
    d = x0[0].numel()
    return float(d) ** 0.5 if norm == "l2" else 1.0


class BoundaryDistance:
    """OPT's boundary distance (Cheng et al., "Query-efficient hard-label black-box attack:
    an optimization-based approach", ICLR 2019) as an :class:`~zoattack.objective.Objective`.

    ``g(theta)`` = the smallest ``lam > 0`` with ``clip(x0 + lam theta / ||theta||, 0, 1)``
    adversarial (``||.||`` the attack's norm, so ``g`` is a distance in that norm), found by
    :func:`line_search` from the image's latest value of ``g`` (the hint) to relative
    tolerance ``tol``. The adversarial example of ``theta`` is the ray's point at ``g``. ``theta``
    lives in a search subspace (``full``, ``tile:K``, ``dct:K``) and is expanded to a pixel
    direction first. Minimising ``g`` over ``theta`` is a smooth-ish, scale-invariant ZO
    problem: any estimator and update rule of the core runs on it.

    Args:
        oracle: the labels-only oracle (its black box is this objective's ``blackbox``).
        subspace: where ``theta`` lives (default: pixels).
        saturate: Linf only, None (default) or a share in (0, 1): the ray direction is
            :func:`saturated_directions` instead of ``theta / ||theta||_inf``. The paper's
            Linf ray makes ``g`` proportional to ``max |theta_i|``, a kink every random
            perturbation of a noise-like ``theta`` moves up (many coordinates sit near the
            max), so difference and sign estimates mostly learn "lower the largest entry";
            a saturated ray spends the full radius on a fixed share of the coordinates and
            keeps ``g`` smooth in the rest. Opt-in, labelled in results.
        tol, growth, max_coarse, max_binary: :func:`line_search` settings.

    Shapes: ``__call__(theta (M, *var_shape), owner (M,)) -> (M,)`` float64.
    Query cost per evaluation: 1 + coarse steps (1-2 near the hint) + about
    ``log2(growth / tol)`` bisections (~6 at the defaults); never more than the image can pay
    (a search cut short by the budget returns its upper bracket, or the largest ``lam``
    probed when no adversarial point was seen).
    """

    def __init__(
        self,
        oracle: LabelOracle,
        subspace: Subspace | None = None,
        *,
        saturate: float | None = None,
        tol: float = 1e-3,
        growth: float = 0.05,
        max_coarse: int = 10,
        max_binary: int = 30,
    ) -> None:
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        if saturate is not None and not 0 < saturate < 1:
            raise ValueError(f"saturate must be in (0, 1) or None, got {saturate}")
        if saturate is not None and oracle.norm != "linf":
            raise ValueError("saturate shapes Linf rays only; drop it for L2")
        self.saturate = saturate
        self.oracle = oracle
        self.blackbox = oracle.blackbox
        self.subspace = subspace or Subspace("full", tuple(oracle.x0.shape[1:]))
        self.tol, self.growth = float(tol), float(growth)
        self.max_coarse, self.max_binary = int(max_coarse), int(max_binary)
        self.cap = lam_cap(oracle.x0, oracle.norm)
        self.hint = torch.full((oracle.n,), float("nan"), dtype=torch.float64)
        self.evaluations = 0
        self.probes = 0

    def directions(self, theta: Tensor) -> Tensor:
        """Unit pixel directions ``(M, C, H, W)`` of variables ``theta``."""
        delta = self.subspace.expand(theta.to(self.oracle.x0.dtype))
        if self.saturate is not None:
            return saturated_directions(delta, self.saturate)
        return unit_directions(delta, self.oracle.norm)

    def point_fn(self, dirs: Tensor, owner: Tensor) -> PointFn:
        x0 = self.oracle.x0.index_select(0, owner)

        def points(rows: Tensor, lam: Tensor) -> Tensor:
            step = lam.to(dirs.dtype).view(-1, *[1] * (dirs.dim() - 1)) * dirs[rows]
            return (x0[rows] + step).clamp(0.0, 1.0)

        return points

    def search(
        self,
        theta: Tensor,
        owner: Tensor,
        lam0: Tensor,
        *,
        adv0: Tensor | None = None,
        require_adv: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """:func:`line_search` along ``theta``'s rays from ``lam0`` -> ``(hi, probes)``."""
        owner = owner.to(self.oracle.x0.device)
        dirs = self.directions(theta)
        return line_search(
            self.oracle,
            self.point_fn(dirs, owner),
            owner,
            lam0.to(owner.device),
            adv0=adv0,
            require_adv=require_adv,
            tol=self.tol,
            growth=self.growth,
            max_coarse=self.max_coarse,
            max_binary=self.max_binary,
            lam_cap=self.cap,
        )

    def ask_at(self, theta: Tensor, owner: Tensor, lam: Tensor) -> Tensor:
        """One question per row: is ``theta``'s ray adversarial at ``lam``? ``(M,)`` bool."""
        owner = owner.to(self.oracle.x0.device)
        dirs = self.directions(theta)
        rows = torch.arange(len(owner), device=owner.device)
        return self.oracle.ask(self.point_fn(dirs, owner)(rows, lam.to(owner.device)), owner)

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        owner = owner.to(self.oracle.x0.device)
        hint = self.hint.to(owner.device)[owner]
        # no hint yet: start from a tenth of the box's diameter
        lam0 = torch.where(torch.isnan(hint), torch.full_like(hint, 0.1 * self.cap), hint)
        hi, probes = self.search(points, owner, lam0)
        self.evaluations += len(owner)
        self.probes += int(probes.sum())
        # No boundary within the search (or cut short before one was seen): the largest
        # distance examined stands in, a finite value the estimators can difference.
        top = (lam0 * (1 + self.growth * 2.0 ** (self.max_coarse - 1))).clamp(max=self.cap)
        g = torch.where(torch.isfinite(hi), hi, top)
        ok = torch.isfinite(hi)
        if bool(ok.any()):
            self.hint.index_copy_(0, owner[ok].cpu(), g[ok].cpu())
        return g

    def probes_per_evaluation(self) -> float:
        """Mean questions per evaluation so far (a default before the first)."""
        if not self.evaluations:
            return 2.0 + max(1.0, torch.tensor(self.growth / self.tol).log2().ceil().item())
        return self.probes / self.evaluations


def random_start(
    objective: BoundaryDistance,
    ids: Tensor,
    generator: torch.Generator,
    *,
    n_init: int = 10,
    max_init: int = 100,
) -> tuple[Tensor, Tensor]:
    """Untargeted starts: directions towards uniform-noise images (Sign-OPT, ART, BlackboxBench).

    Round ``j`` draws one noise image ``u`` per image still searching; its direction
    ``theta = restrict(u - x0)`` is kept if it beats the best so far: one question at the best
    ``g`` along it (or at ``u`` itself while none is known), then a downward search only if
    that answered "adversarial". Images stop after ``n_init`` directions if they have a start,
    else after ``max_init`` (then ``g`` stays inf: no start).

    Returns ``(theta (N, *var_shape), g (N,))`` for the images ``ids`` ``(N,)``.
    """
    oracle = objective.oracle
    space = objective.subspace
    x0 = oracle.x0.index_select(0, ids)
    n = len(ids)
    theta = torch.zeros(n, *space.var_shape, dtype=x0.dtype, device=x0.device)
    g = torch.full((n,), float("inf"), dtype=torch.float64, device=x0.device)
    for j in range(max_init):
        want = (g.isinf() | (j < n_init)) & (oracle.remaining(ids) > 0).to(x0.device)
        if j >= n_init:
            want &= g.isinf()
        rows = want.nonzero().flatten()
        if not rows.numel():
            break
        u = torch.rand(len(rows), *x0.shape[1:], generator=generator, device=generator.device).to(
            x0
        )
        cand = space.restrict(u - x0[rows])
        # while no start is known, ask at the noise image itself (its distance on the ray)
        flat = space.expand(cand).flatten(1)
        at_u = flat.norm(dim=1) if oracle.norm == "l2" else flat.abs().max(dim=1).values
        lam0 = torch.where(g[rows].isinf(), at_u.double(), g[rows])
        hi, _ = objective.search(cand, ids[rows], lam0, require_adv=True)
        better = hi < g[rows]
        if bool(better.any()):
            theta[rows[better]] = cand[better]
            g[rows[better]] = hi[better]
    ok = g.isfinite()
    if bool(ok.any()):
        objective.hint.index_copy_(0, ids[ok].cpu(), g[ok].cpu())
    return theta, g


def targeted_start(
    objective: BoundaryDistance, ids: Tensor, x_init: Tensor
) -> tuple[Tensor, Tensor]:
    """Targeted starts from given images of the target class ``x_init`` ``(N, C, H, W)``:
    one counted question at the start itself (pixel space: it is ``x_init`` exactly), then a
    downward search; a start the model does not put in the target class leaves ``g`` inf."""
    oracle = objective.oracle
    x0 = oracle.x0.index_select(0, ids)
    theta = objective.subspace.restrict(x_init.to(x0) - x0)
    flat = objective.subspace.expand(theta).flatten(1)
    lam0 = flat.norm(dim=1) if oracle.norm == "l2" else flat.abs().max(dim=1).values
    hi, _ = objective.search(theta, ids, lam0.double(), require_adv=True)
    ok = hi.isfinite()
    if bool(ok.any()):
        objective.hint.index_copy_(0, ids[ok].cpu(), hi[ok].cpu())
    return theta, hi
