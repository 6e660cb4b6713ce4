"""ReLIZO: minimum-norm linear-interpolation estimate with reuse of past queries."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoattack.estimators.base import (
    Estimate,
    StatefulEstimator,
    check_mu_resolvable,
    check_positive,
    query_with_base,
)
from zoattack.estimators.registry import ESTIMATORS
from zoattack.objective import Objective


@ESTIMATORS.register(
    "lizo",
    description="ReLIZO linear interpolation; reuses past queries within a radius",
    aliases=("relizo",),
    flags={"stateful": True, "random": True},
)
class LIZOEstimator(StatefulEstimator):
    """Sample-reusable linear-interpolation estimator (Wang et al., ReLIZO, NeurIPS 2024).

    With ``n`` probe displacements ``delta_i`` (unit rows ``U``, lengths ``r``) and
    ``b_i = (f(x + delta_i) - f(x)) / r_i``, the estimate is the minimum-norm solution of
    ``U g = b``: ``g = U^T pinv(U U^T) b``, i.e. the projection of the gradient onto the
    probe span (so ``E[g] = (n/d) grad`` for isotropic probes; raw, as in the paper).

    Reuse: the previous center and its ``n`` probes are candidates at the new point ``x``
    (displacement ``p - x``, value known). Those closer than ``reuse_distance_bound`` are
    reused, at most ``floor(max_reuse_rate * n)`` of them (nearest first); the other slots get
    fresh probes ``mu * w`` (``w ~ N(0, I)``, length about ``mu sqrt(d)``), or, with
    ``orthogonal=True``, orthonormal directions orthogonal to the reused ones scaled to the
    same length (fixing the official code's float32-hazardous shrinking radius). The reused
    block of the Gram matrix comes from the stored Gram by the update
    ``<D_i+s, D_j+s> = G_ij + <D_i,s> + <D_j,s> + |s|^2`` (``s`` = old center - x); only rows
    new to some example get explicit inner products. The small solve runs in float64 with a
    pseudo-inverse, so duplicate or dependent rows are harmless.

    Reuse assumes a deterministic objective: set ``reuse_distance_bound=0`` for stochastic
    ones (mini-batched losses, randomized defenses).

    Defaults: ``num_samples=8`` (n, capped at d), ``mu=1e-3``, ``reuse_distance_bound=None``
    (reuse off; the ``lizo`` update rule sets ``2*lr``), ``max_reuse_rate=0.5``,
    ``orthogonal=False``. Forward differences only.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``; state ``(N_total, n, d)``.
    Queries per call and example: ``1 + n - n_reused`` (the 1 is dropped when ``f(x)`` is
    supplied); ``queries_per_call`` reports the no-reuse cost ``n + 1``.
    """

    name = "lizo"
    supports_central = False

    def __init__(
        self,
        *,
        num_samples: int = 8,
        mu: float = 1e-3,
        difference: str = "forward",
        reuse_distance_bound: float | None = None,
        max_reuse_rate: float = 0.5,
        orthogonal: bool = False,
    ) -> None:
        super().__init__(num_samples=num_samples, mu=mu, difference=difference)
        bound = 0.0 if reuse_distance_bound is None else float(reuse_distance_bound)
        check_positive("reuse_distance_bound", bound, allow_zero=True)
        if not (0.0 <= max_reuse_rate < 1.0):
            raise ValueError(
                f"max_reuse_rate must be in [0, 1), got {max_reuse_rate}: at 1 every probe may be "
                "reused, no fresh direction is explored and the search subspace freezes"
            )
        self.reuse_distance_bound = bound
        self.max_reuse_rate = float(max_reuse_rate)
        self.orthogonal = bool(orthogonal)

    def queries_per_call(self, dim: int) -> int:
        return min(self.num_samples, dim) + 1

    # ----------------------------------------------------------------- state
    def _load(self, idx: Tensor, n: int, d: int, x: Tensor) -> dict[str, Tensor]:
        dev = x.device
        st = self.state
        return {
            "valid": st.get("valid", idx, (), dtype=torch.bool, fill=False, device=dev),
            "center": st.get("center", idx, (d,), dtype=x.dtype, device=dev),
            "fc": st.get("fc", idx, (), dtype=torch.float64, device=dev),
            "disp": st.get("disp", idx, (n, d), dtype=x.dtype, device=dev),
            "fvals": st.get("fvals", idx, (n,), dtype=torch.float64, device=dev),
            "gram": st.get("gram", idx, (n, n), dtype=torch.float64, device=dev),
        }

    # ------------------------------------------------------------- estimate
    def _estimate(
        self,
        objective: Objective,
        x: Tensor,
        shape: torch.Size,
        generator: torch.Generator,
        idx: Tensor,
        fx: Tensor,
    ) -> Estimate:
        batch, d = x.shape
        n = min(self.num_samples, d)
        check_mu_resolvable(x, self.mu, self.mu, x.dtype)
        old = self._load(idx, n, d, x)
        dev = x.device

        # Reuse candidates: slot 0 is the old center, slots 1..n its probes. Their Gram
        # matrix relative to x follows from the stored one without touching the d-dim rows.
        s = old["center"] - x  # (B, d)
        dfull = torch.cat([torch.zeros_like(old["disp"][:, :1]), old["disp"]], dim=1)
        t = torch.einsum("bid,bd->bi", dfull.double(), s.double())  # (B, n+1)
        ss = (s.double() ** 2).sum(1)
        gfull = torch.zeros(batch, n + 1, n + 1, dtype=torch.float64, device=dev)
        gfull[:, 1:, 1:] = old["gram"]
        gdelta = gfull + t.unsqueeze(2) + t.unsqueeze(1) + ss.view(-1, 1, 1)
        dist = gdelta.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (B, n+1)
        vals_full = torch.cat([old["fc"].unsqueeze(1), old["fvals"]], dim=1)
        eligible = (
            old["valid"].unsqueeze(1)
            & (dist < self.reuse_distance_bound)
            & (dist > 1e-12 * (1.0 + x.double().norm(dim=1, keepdim=True)))
            & torch.isfinite(vals_full)
        )
        cap = math.floor(self.max_reuse_rate * n)
        order = torch.where(eligible, dist, torch.inf).argsort(dim=1)[:, :n]  # (B, n)
        n_reused = eligible.sum(1).clamp(max=cap)  # (B,)
        slot = torch.arange(n, device=dev).unsqueeze(0)
        reused = slot < n_reused.unsqueeze(1)  # (B, n)

        reuse_rows = torch.gather(dfull, 1, order.unsqueeze(2).expand(-1, -1, d)) + s.unsqueeze(1)
        fresh_dir = torch.randn(
            batch, n, d, generator=generator, device=generator.device, dtype=x.dtype
        )
        if self.orthogonal:
            stacked = torch.where(reused.unsqueeze(2), reuse_rows, fresh_dir)
            q, _ = torch.linalg.qr(stacked.transpose(1, 2).double())
            fresh_dir = q.transpose(1, 2).to(x.dtype) * math.sqrt(d)
        rows = torch.where(reused.unsqueeze(2), reuse_rows, self.mu * fresh_dir)

        f0, fresh_vals, actual, queries = query_with_base(
            objective, x, rows, shape, idx, fx, fresh=~reused
        )
        assert actual is not None
        rows = torch.where(reused.unsqueeze(2), rows, actual)  # what was really probed
        reuse_vals = torch.gather(vals_full, 1, order)
        vals = torch.where(reused, reuse_vals, fresh_vals)

        # Gram of the probe rows: reused block from the update above, explicit products
        # only for slots that hold a fresh probe in some example.
        gram = torch.gather(
            torch.gather(gdelta, 1, order.unsqueeze(2).expand(-1, -1, n + 1)),
            2,
            order.unsqueeze(1).expand(-1, n, -1),
        )
        first_new = int(n_reused.min())
        if first_new < n:
            rows64 = rows.double()
            cross = torch.einsum("bid,bjd->bij", rows64, rows64[:, first_new:])
            both_reused = reused.unsqueeze(2) & reused[:, first_new:].unsqueeze(1)
            gram[:, :, first_new:] = torch.where(both_reused, gram[:, :, first_new:], cross)
            gram[:, first_new:, :] = gram[:, :, first_new:].transpose(1, 2).clone()
        r = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (B, n)
        rinv = torch.where(r > 0, 1.0 / r, torch.zeros_like(r))
        a = gram * rinv.unsqueeze(2) * rinv.unsqueeze(1)
        b = (vals - f0.unsqueeze(1)) * rinv
        # Cut-off at the rows' own precision: near-duplicate float32 rows must not amplify noise.
        rtol = 100 * torch.finfo(x.dtype).eps
        alpha = torch.linalg.pinv(a, hermitian=True, rtol=rtol) @ b.unsqueeze(2)
        grad = torch.einsum("bi,bid->bd", (alpha.squeeze(2) * rinv).to(x.dtype), rows)

        ok = torch.isfinite(grad).all(dim=1) & torch.isfinite(f0)
        grad = torch.where(ok.unsqueeze(1), grad, torch.zeros_like(grad))
        st = self.state
        st.set("valid", idx, ok)
        st.set("center", idx, x)
        st.set("fc", idx, f0)
        st.set("disp", idx, rows)
        st.set("fvals", idx, vals)
        st.set("gram", idx, gram)
        self.last_reused = n_reused
        return Estimate(grad=grad, loss=f0, queries=queries)
