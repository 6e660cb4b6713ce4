"""ReLIZO: minimum-norm linear-interpolation estimate with reuse of past queries."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from zoattack.estimators.base import (
    Estimate,
    StatefulEstimator,
    Workspace,
    check_mu_resolvable,
    check_positive,
)
from zoattack.estimators.registry import ESTIMATORS
from zoattack.objective import Objective, Scorer, evaluate_grid, evaluate_ragged


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

    Randomness: directions are drawn only for the slots that take a fresh probe (one
    ``(k, d)`` Gaussian draw, example-then-slot order; the whole ``(N, n, d)`` block when
    nothing is reused): the same i.i.d. distribution as drawing every slot, half the draws
    at the default reuse rate.

    Reuse assumes a deterministic objective: set ``reuse_distance_bound=0`` for stochastic
    ones (mini-batched losses, randomized defenses).

    Constrained objectives: if the objective has ``feasible(points, owner)`` (the attack
    objective does: its projection onto the threat ball), fresh probes are projected before
    they are scored and the projected displacement is the row interpolated. Without this, at
    a vertex of an Linf ball about half of each probe's coordinates are clipped by the
    objective and the linear system describes points that were never queried (at Linf 0.1 on
    small_cnn, held-out images: 53% -> 69% success at 1,000 queries; L2 unchanged).

    Defaults: ``num_samples=8`` (n, capped at d), ``mu=1e-3``, ``reuse_distance_bound=None``
    (reuse off; the ``lizo`` update rule sets ``2*lr``), ``max_reuse_rate=0.5``,
    ``orthogonal=False``. Forward differences only.
    Shapes: ``x`` ``(N, *shape)`` -> grad ``(N, *shape)``; state ``(N_total, n, d)``.
    Queries per call and example: ``1 + n - n_reused`` (the 1 is dropped when ``f(x)`` is
    supplied); ``queries_per_call`` reports the no-reuse cost ``n + 1``.
    """

    name = "lizo"
    supports_central = False
    # The one-block path for steps where every example reuses as many rows (see
    # _block_probes); tests turn it off to compare with the slot-by-slot path.
    _by_blocks: ClassVar[bool] = True

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
        self._ws = Workspace()
        # The stored probes the workspace's float64 block holds, and their version (see
        # _dfull64); None when it holds nothing reusable.
        self._disp64_of: tuple[Tensor, int] | None = None

    def queries_per_call(self, dim: int) -> int:
        return min(self.num_samples, dim) + 1

    def reset(self, mask: Tensor | None = None) -> None:
        super().reset(mask)
        if mask is None:
            self._ws.clear()
            self._disp64_of = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._ws.clear()
        self._disp64_of = None

    # ----------------------------------------------------------------- state
    def _load(self, idx: Tensor, n: int, d: int, x: Tensor) -> dict[str, Tensor]:
        dev = x.device
        st = self.state
        return {
            "valid": st.get("valid", idx, (), dtype=torch.bool, fill=False, device=dev),
            "center": st.get("center", idx, (d,), dtype=x.dtype, device=dev),
            "fc": st.get("fc", idx, (), dtype=torch.float64, device=dev),
            "disp": self._disp(idx, n, d, x),
            "fvals": st.get("fvals", idx, (n,), dtype=torch.float64, device=dev),
            "gram": st.get("gram", idx, (n, n), dtype=torch.float64, device=dev),
        }

    def _whole(self, idx: Tensor) -> Tensor | None:
        """The stored displacements themselves when ``idx`` is every stored example in order
        (the usual step: nothing finished yet), else None. Read-only for the caller."""
        t = self.state.tensors.get("disp")
        if t is None or len(t) != idx.numel() or not bool(idx.numel()):
            return None
        ids = torch.arange(len(t), device=idx.device)
        return t if torch.equal(idx, ids) else None

    def _disp(self, idx: Tensor, n: int, d: int, x: Tensor) -> Tensor:
        t = self._whole(idx)
        if t is not None and t.shape[1:] == (n, d) and t.dtype == x.dtype and t.device == x.device:
            return t  # no (N, n, d) copy: only read until _store_disp replaces it
        return self.state.get("disp", idx, (n, d), dtype=x.dtype, device=x.device)

    def _store_disp(self, idx: Tensor, rows: Tensor, buffer: str) -> None:
        """Store this call's probe rows (the workspace's ``buffer``). When they replace the
        whole stored tensor, the buffer itself becomes the state and the old state the next
        call's buffer (no copy)."""
        old = self._whole(idx)
        if old is not None and old.shape == rows.shape and rows._base is None:
            self.state.tensors["disp"] = rows
            self._ws.swap(buffer, old)
        else:
            self.state.set("disp", idx, rows)

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
        # Every (B, n, d) pass counts at image sizes (d = 150,528 at 224x224): the
        # displacements are read in place, scratch tensors live in reused buffers, reuse
        # rows are built only for the slots that can hold one, and probes are scored
        # straight from their buffer. The arithmetic is the same, operation for operation.
        batch, d = x.shape
        n = min(self.num_samples, d)
        check_mu_resolvable(x, self.mu, self.mu, x.dtype)
        old = self._load(idx, n, d, x)
        dev = x.device
        ws = self._ws

        # Reuse candidates: slot 0 is the old center, slots 1..n its probes. Their Gram
        # matrix relative to x follows from the stored one without touching the d-dim rows.
        s = old["center"] - x  # (B, d)
        dfull = self._dfull64(old["disp"], batch, n, d, dev)
        s64 = s.double()
        t = torch.einsum("bid,bd->bi", dfull, s64)  # (B, n+1)
        ss = (s64**2).sum(1)
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
        used = int(n_reused.max())  # reused rows sit in the first `used` slots
        first_new = int(n_reused.min())
        base = torch.isnan(fx)
        has_base = bool(base.any())
        reuse_vals = torch.gather(vals_full, 1, order)
        store_as = "pts"
        if self._by_blocks and first_new == used and not has_base and not self.orthogonal:
            # The usual step: every example reuses as many rows as the others and f(x) is
            # known, so the fresh probes are one block (slots used..n-1 of each example),
            # built, scored and turned into rows in place; reused rows are written once.
            rows = ws.get("rows", (batch, n, d), x.dtype, dev)
            fresh_vals = self._block_probes(
                objective, x, rows, old["disp"], s, order, used, generator, idx, shape
            )
            vals = reuse_vals.clone()
            vals[:, used:] = fresh_vals
            f0, queries = fx, n - n_reused
            store_as = "rows"
        else:
            # Examples reuse different numbers of rows (or f(x) is unknown): slot by slot.
            if self.orthogonal:
                rows = self._orthogonal_rows(old["disp"], s, order, reused, generator, x)
            else:
                rows = ws.get("rows", (batch, n, d), x.dtype, dev)
                if not used:
                    torch.randn(batch, n, d, generator=generator, out=rows)
                    rows.mul_(self.mu)  # the fresh probes mu * w
                else:
                    # Directions only for the slots that take a fresh probe (n - n_reused
                    # per example, in example-then-slot order): i.i.d. N(0, I) rows as
                    # before, without drawing the reused slots' directions only to
                    # overwrite them.
                    slots = (~reused).flatten().nonzero().flatten()
                    draws = ws.get("draws", (slots.numel(), d), x.dtype, dev)
                    torch.randn(draws.shape, generator=generator, out=draws)
                    draws.mul_(self.mu)
                    rows.view(batch * n, d).index_copy_(0, slots, draws)
                    reuse = self._reuse_rows(old["disp"], s, order[:, :used])
                    head = rows[:, :used]
                    torch.where(reused[:, :used].unsqueeze(2), reuse, head, out=head)

            # Score x (where f(x) is unknown) and the fresh probes x + rows.
            pts = ws.get("pts", (batch, n, d), x.dtype, dev)
            torch.add(x.unsqueeze(1), rows, out=pts)
            scorer = self._project(objective, pts, idx, n, shape)
            fresh = ~reused
            if has_base:
                cand = torch.cat([x.unsqueeze(1), pts], dim=1)
                keep = torch.ones(batch, n + 1, dtype=torch.bool, device=dev)
                keep[:, 0] = base
                keep[:, 1:] = fresh
                # x itself is not known to be feasible: the objective projects the lot (the
                # probes are projected again, as before the fused path existed).
                scored = evaluate_ragged(objective, cand.reshape(batch, n + 1, *shape), keep, idx)
                f0 = torch.where(base, scored[:, 0], fx)
                fresh_vals = scored[:, 1:]
                queries = keep.sum(dim=1)
            else:
                fresh_vals = evaluate_ragged(scorer, pts.view(batch, n, *shape), fresh, idx)
                f0, queries = fx, fresh.sum(dim=1)
            # What was really probed: (x + delta) - x after rounding; reused rows stay.
            torch.sub(pts, x.unsqueeze(1), out=pts)
            if used:
                head = pts[:, :used]
                torch.where(reused[:, :used].unsqueeze(2), rows[:, :used], head, out=head)
            rows = pts
            vals = torch.where(reused, reuse_vals, fresh_vals)

        # Gram of the probe rows: reused block from the update above, explicit products
        # only for slots that hold a fresh probe in some example.
        gram = torch.gather(
            torch.gather(gdelta, 1, order.unsqueeze(2).expand(-1, -1, n + 1)),
            2,
            order.unsqueeze(1).expand(-1, n, -1),
        )
        nxt: Tensor | None = None
        if first_new < n:
            if rows.dtype == torch.float64:
                rows64 = rows
            else:
                # Written as rows 1..n of the next call's candidate block: when these rows
                # become the stored probes, that call starts from them without a cast.
                nxt = ws.get("dfull64_next", (batch, n + 1, d), torch.float64, dev)
                rows64 = nxt[:, 1:]
                rows64.copy_(rows)
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
        self._store_disp(idx, rows, store_as)
        self._disp64_of = None
        if nxt is not None and len(nxt) == batch and st.tensors["disp"] is rows:
            nxt[:, 0].zero_()
            ws.swap("dfull64_next", dfull)
            ws.swap("dfull64", nxt)
            self._disp64_of = (rows, rows._version)
        st.set("fvals", idx, vals)
        st.set("gram", idx, gram)
        self.last_reused = n_reused
        return Estimate(grad=grad, loss=f0, queries=queries)

    @staticmethod
    def _project(
        objective: Objective, pts: Tensor, idx: Tensor, n: int, shape: torch.Size
    ) -> Objective | Scorer:
        """Move the probes ``pts`` ``(B, n, d)`` into the objective's feasible set in place
        and return what scores them.

        A constrained objective scores its own projection of a probe, so the displacement
        the interpolation must use is the projected one (pts - x); the raw row would
        attribute the change in f to coordinates the ball clipped away. An objective with
        ``feasible_``/``score_feasible`` (the attack objective) projects in place and then
        scores the projected points without projecting them again (exact: it re-projects
        wherever its projection is not idempotent bit for bit)."""
        feasible = getattr(objective, "feasible", None)
        if feasible is None:
            return objective
        batch = pts.shape[0]
        flat = pts.view(batch * n, *shape)
        owners = idx.repeat_interleave(n)
        in_place = getattr(objective, "feasible_", None)
        scorer = getattr(objective, "score_feasible", None)
        if in_place is not None and scorer is not None:
            in_place(flat, owners)
            return scorer
        pts.copy_(feasible(flat, owners).reshape(pts.shape))
        return objective

    def _dfull64(self, disp: Tensor, batch: int, n: int, d: int, dev: torch.device) -> Tensor:
        """``(B, n + 1, d)`` float64: a zero row (the old center) then the stored probes. The
        previous call leaves it ready when its probes are the stored ones, untouched."""
        dfull = self._ws.get("dfull64", (batch, n + 1, d), torch.float64, dev)
        seen = self._disp64_of
        if seen is not None and seen[0] is disp and seen[1] == disp._version:
            return dfull
        dfull[:, 0].zero_()
        dfull[:, 1:].copy_(disp)
        return dfull

    def _block_probes(
        self,
        objective: Objective,
        x: Tensor,
        rows: Tensor,
        disp: Tensor,
        s: Tensor,
        order: Tensor,
        used: int,
        generator: torch.Generator,
        idx: Tensor,
        shape: torch.Size,
    ) -> Tensor:
        """Fill ``rows`` ``(B, n, d)`` when every example reuses ``used`` rows: slots
        ``:used`` the reused rows, slots ``used:`` fresh probes, which are scored; returns
        their values ``(B, n - used)`` float64.

        The same numbers as the slot-by-slot path (the same draws in the same order, the same
        points scored in the same order by the same owners, the same roundings), with each
        pass over the fresh rows made once: no reused slot is offset, projected or restored."""
        batch, n, d = rows.shape
        k = n - used
        fresh = self._ws.get("fresh", (batch, k, d), x.dtype, x.device)
        torch.randn(fresh.shape, generator=generator, out=fresh)
        fresh.mul_(self.mu).add_(x.unsqueeze(1))  # x + mu w (addition commutes bit for bit)
        scorer = self._project(objective, fresh, idx, k, shape)
        vals = evaluate_grid(scorer, fresh.view(batch, k, *shape), idx)
        torch.sub(fresh, x.unsqueeze(1), out=rows[:, used:])
        if used:
            scratch = self._ws.get("gather", (batch * used, d), x.dtype, x.device)
            self._reuse_rows(disp, s, order[:, :used], out=rows[:, :used], scratch=scratch)
        return vals.to(device=x.device, dtype=torch.float64)

    @staticmethod
    def _reuse_rows(
        disp: Tensor,
        s: Tensor,
        order: Tensor,
        out: Tensor | None = None,
        scratch: Tensor | None = None,
    ) -> Tensor:
        """``D_j + s`` for candidate ``j = order`` ``(B, m)`` (0: the old center, ``D = 0``;
        ``j >= 1``: stored probe ``j - 1``) -> ``(B, m, d)`` (into ``out`` when given; the
        rows are gathered into ``scratch`` ``(B * m, d)`` when given)."""
        batch, n, d = disp.shape
        m = order.shape[1]
        # Whole rows through a flat index_select (row copies), not an element-wise gather.
        src = (order - 1).clamp_min(0) + n * torch.arange(batch, device=order.device).unsqueeze(1)
        flat = disp.reshape(batch * n, d)
        if scratch is None:
            got = flat.index_select(0, src.flatten()).view(batch, m, d)
        else:
            got = torch.index_select(flat, 0, src.flatten(), out=scratch).view(batch, m, d)
        center = (order == 0).flatten().nonzero().flatten()
        if center.numel():  # whole rows: index_fill_ writes only those (a bool mask reads all)
            got.view(batch * m, d).index_fill_(0, center, 0.0)
        if out is None:
            return got.add_(s.unsqueeze(1))
        return torch.add(got, s.unsqueeze(1), out=out)

    def _orthogonal_rows(
        self,
        disp: Tensor,
        s: Tensor,
        order: Tensor,
        reused: Tensor,
        generator: torch.Generator,
        x: Tensor,
    ) -> Tensor:
        """Reused rows, the other slots orthonormal to them (QR), scaled to ``mu sqrt(d)``."""
        batch, n = reused.shape
        d = x.shape[1]
        reuse_rows = self._reuse_rows(disp, s, order)
        fresh_dir = torch.randn(
            batch, n, d, generator=generator, device=generator.device, dtype=x.dtype
        )
        stacked = torch.where(reused.unsqueeze(2), reuse_rows, fresh_dir)
        q, _ = torch.linalg.qr(stacked.transpose(1, 2).double())
        fresh_dir = q.transpose(1, 2).to(x.dtype) * math.sqrt(d)
        return torch.where(reused.unsqueeze(2), reuse_rows, self.mu * fresh_dir)
