"""RayS: hierarchical block sign flips of a ray direction, Linf."""

from __future__ import annotations

import torch
from torch import Tensor

from zoattack.attacks.hardlabel.base import DECISION_ATTACKS, DecisionAttack, Run, check_float
from zoattack.attacks.hardlabel.boundary import line_search
from zoattack.attacks.sign import block_bounds, finest_level


@DECISION_ATTACKS.register(
    "rays",
    description="RayS: hierarchical sign flips of the ray, one query per candidate "
    "(Chen & Gu 2020)",
    flags={"needs": "labels", "norms": ("linf",)},
)
class RaySAttack(DecisionAttack):
    """RayS (Chen & Gu, "RayS: a ray searching method for hard-label adversarial attack",
    KDD 2020), Linf only, batched across images.

    Searches sign vectors ``s`` in {-1, +1}^d: the ray ``clip(x0 + r s, 0, 1)`` has Linf
    distance at most ``r``; ``r*`` is the best radius found. Start: ``s`` = all ones
    (targeted: ``sign(x_init - x0)``, after one question at ``x_init`` itself), its radius
    found by asking at ``r = 1`` (beyond it points no longer change) and bisecting. Step: at
    level ``k`` the flat coordinates split into ``2^k`` contiguous blocks; flip the next block
    and ask once whether the flipped ray is adversarial at ``min(r*, 1)``; only if so, keep the
    flip and bisect ``[0, r*]`` to absolute tolerance ``tol``. After the last block of a level
    comes level ``k+1``; after single coordinates, level 0 again.

    Defaults: ``tol=1e-3`` (the paper's); no other hyperparameters.
    Shapes: images ``(N, C, H, W)``; ``s`` ``(N, d)``.
    Query cost per step and image: 1, plus ~log2(r*/tol) when the flip is kept.
    """

    name = "rays"
    norms = ("linf",)

    def __init__(self, *, tol: float = 1e-3) -> None:
        self.tol = check_float("tol", tol, high=1.0)

    def _attack(self, run: Run) -> None:
        oracle = run.oracle
        x0 = oracle.x0
        dev = x0.device
        n = oracle.n
        d = x0[0].numel()
        s = torch.ones(n, d, dtype=x0.dtype, device=dev)
        r = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        ids = run.ids()
        if run.x_init is not None:
            start = run.x_init.index_select(0, ids)
            ok = oracle.ask(start, ids)  # the start check: one question
            diff = (start - x0[ids]).flatten(1)
            s[ids] = torch.where(diff < 0, -1.0, 1.0).to(s)
            found = torch.zeros_like(run.active)
            found[ids] = ok
            self.after_start(run, found)
            ids = run.ids()
        if ids.numel():
            r[ids] = self._radius(run, ids, s[ids], r[ids])
        level, block = 0, 0
        top = finest_level(d)
        while run.next_step(1):
            ids = run.ids()
            lv = torch.full((len(ids),), level, dtype=torch.int64, device=dev)
            ch = torch.full_like(lv, block)
            lo, hi = block_bounds(lv, ch, d)
            cols = torch.arange(d, device=dev).unsqueeze(0)
            inside = (cols >= lo.unsqueeze(1)) & (cols < hi.unsqueeze(1))
            cand = torch.where(inside, -s[ids], s[ids])
            r_new = self._radius(run, ids, cand, r[ids])
            better = r_new < r[ids]
            s[ids[better]] = cand[better]
            r[ids[better]] = r_new[better]
            block += 1
            if block >= 2**level:
                level, block = level + 1, 0
                if level > top:
                    level = 0

    def _radius(self, run: Run, ids: Tensor, sign: Tensor, r: Tensor) -> Tensor:
        """Smallest adversarial radius along ``sign`` if below ``r`` (one question when not)."""
        x0 = run.oracle.x0.index_select(0, ids)
        shape = x0.shape

        def points(rows: Tensor, lam: Tensor) -> Tensor:
            step = lam.to(x0.dtype).view(-1, 1, 1, 1) * sign[rows].view(-1, *shape[1:])
            return (x0[rows] + step).clamp(0.0, 1.0)

        probe = r.clamp(max=1.0)
        rows = torch.arange(len(ids), device=x0.device)
        fit = run.oracle.affordable(ids)
        out = r.clone()
        rows = rows[fit]
        if not rows.numel():
            return out
        adv = run.oracle.ask(points(rows, probe[rows]), ids[rows])
        rows = rows[adv]
        if not rows.numel():
            return out
        hi0 = probe[rows]
        hi, _ = line_search(
            run.oracle,
            lambda rr, lam: points(rows[rr], lam),
            ids[rows],
            hi0,
            lo0=torch.zeros_like(hi0),
            hi0=hi0,
            tol=0.0,
            abs_tol=self.tol,
            max_binary=60,
        )
        out[rows] = hi
        return out
