"""``gfcs``: Gradient First, Coimage Second (Lord, Mueller and Bertinetto, ICLR 2022)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.base import AttackResult
from zoattack.attacks.surrogates import SURROGATE_ATTACKS, SurrogateEnsemble
from zoattack.attacks.transfer import clean_check, finish, step_direction
from zoattack.blackbox import BlackBox
from zoattack.losses import attack_loss, is_adversarial
from zoattack.norms import check_norm, project


def _describe(norm: str, lr: float, eps: float) -> str:
    if norm == "l2":
        return (
            f"the paper's L2 algorithm: SimBA steps of L2 length {lr:g} along the surrogates' "
            "normalised loss gradients, ODS directions when none helps"
        )
    return (
        f"Linf variant (not the paper's algorithm): SimBA steps of {lr:g} along the sign of "
        "the surrogates' loss gradients, then of ODS directions"
    )


@SURROGATE_ATTACKS.register(
    "gfcs",
    description="GFCS: surrogate loss gradients first, ODS directions second, SimBA steps "
    "(Lord, Mueller & Bertinetto 2022)",
    flags={
        "norms": ("l2", "linf"),
        "method": _describe,
        "uses": "each one's loss gradient in turn, then ODS directions",
        "defaults": "lr: l2 eps/5, linf eps/4",
    },
)
def gfcs(
    blackbox: BlackBox,
    x0: Tensor,
    label: Tensor,
    ensemble: SurrogateEnsemble,
    *,
    generator: torch.Generator,
    norm: str,
    eps: float,
    budget: int,
    lr: float | None = None,
    loss: str = "margin",
    target: Tensor | str | int | None = None,
    progress: Callable[[int], None] | None = None,
    **unused: Any,
) -> AttackResult:
    """GFCS (Lord, Mueller and Bertinetto, "Attacking deep networks with surrogate-based
    adversarial black-box methods is easy", ICLR 2022), batched across images.

    Update, per image and step: while some surrogate of the ensemble has not been tried at the
    current point, take one of them at random and its loss gradient ``d`` (gradient first);
    once every surrogate has failed there, take an ODS direction instead (coimage second:
    the gradient of ``w . logits`` of a random surrogate, ``w`` uniform in ``[-1, 1]^C``,
    Tashiro et al. 2020). SimBA step: query ``Proj(x + lr u(d))``, and if the victim's attack
    loss did not fall, ``Proj(x - lr u(d))``; the first that lowers the loss is taken, and
    then every surrogate may be tried again at the new point. ``u`` is ``d / ||d||_2`` (the
    paper's L2 algorithm, the default) or ``sign(d)`` (the Linf variant, labelled as such in
    the method line). ``Proj`` projects onto the ``eps`` ball and clips to [0, 1].

    Defaults: margin loss (the paper's); ``lr`` (the step length) ``eps/5`` at L2 and
    ``eps/4`` at Linf (set by the job: the paper's ImageNet step, 2.0 in a ball of radius
    sqrt(0.001 d) = 12.3, is about eps/6).
    Shapes: ``x0`` ``(N, C, H, W)`` in [0, 1], ``label`` ``(N,)``; all images step together.
    Query cost: the clean check, then at most 2 queries per step and image (1 when the
    first sign helps or when one query of budget is left); an image stops at its first
    adversarial query (a success) or when its budget is spent. Surrogate cost: one gradient
    pass of one surrogate per step and image (counted apart, never a query).
    Deterministic given ``generator``.
    """
    norm = check_norm(norm, eps)
    lr = (eps / 5 if norm == "l2" else eps / 4) if lr is None else lr
    n, dev = x0.shape[0], x0.device
    k_models = len(ensemble)
    idx = torch.arange(n, device=dev)
    clean_pred, tgt, fx, correct = clean_check(blackbox, x0, label, idx, target, generator, loss)
    x = x0.clone()
    final_pred = clean_pred.clone()
    found = torch.zeros(n, dtype=torch.bool, device=dev)
    tried = torch.zeros(n, k_models, dtype=torch.bool, device=dev)
    reasons = ["misclassified" if not c else "" for c in correct.tolist()]
    active = correct.clone()

    def remaining(rows: Tensor) -> Tensor:
        return (budget - blackbox.queries_of(rows)).to(dev)

    while True:
        rows = (active & (remaining(idx) >= 1)).nonzero().flatten()
        for i in (active & (remaining(idx) < 1)).nonzero().flatten().tolist():
            reasons[i] = "budget"
            active[i] = False
        if not rows.numel():
            break
        xr, yr = x[rows], label[rows]
        tr = tgt[rows] if tgt is not None else None
        # Gradient first: a random untried surrogate; coimage second: ODS on a random one.
        keys = torch.rand(rows.numel(), k_models, generator=generator, device=generator.device)
        keys = keys.to(dev).masked_fill(tried[rows], -1.0)
        use_grad = ~tried[rows].all(dim=1)
        pick = keys.argmax(dim=1)
        ods_pick = torch.randint(
            k_models, (rows.numel(),), generator=generator, device=generator.device
        ).to(dev)
        w = torch.rand(
            rows.numel(), _classes(ensemble, xr), generator=generator, device=generator.device
        )
        w = w.to(dev) * 2 - 1
        d = torch.zeros_like(xr)
        for j in range(k_models):
            sel = (use_grad & (pick == j)).nonzero().flatten()
            if sel.numel():
                g = ensemble.member_loss_grad(
                    j, xr[sel], yr[sel], kind=loss, target=tr[sel] if tr is not None else None
                )
                # Descent on the attack loss (it falls as the image moves toward adversarial).
                d[sel] = -g
        ods = (~use_grad).nonzero().flatten()
        if ods.numel():
            d[ods] = ensemble.ods_grad(ods_pick[ods], xr[ods], w[ods])
        u = step_direction(d, norm)
        improved = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        pending = torch.ones(rows.numel(), dtype=torch.bool, device=dev)
        for sign in (1.0, -1.0):
            ask = (pending & (remaining(rows) >= 1)).nonzero().flatten()
            if not ask.numel():
                break
            cand = x0[rows[ask]] + project(xr[ask] + sign * lr * u[ask] - x0[rows[ask]], norm, eps)
            cand = cand.clamp(0, 1)
            scores = blackbox.query(cand, rows[ask]).to(dev)
            f = attack_loss(scores, yr[ask], kind=loss, target=tr[ask] if tr is not None else None)
            pred = scores.argmax(dim=1)
            adv = is_adversarial(pred, yr[ask], tr[ask] if tr is not None else None)
            better = (f < fx[rows[ask]]) | adv
            take = ask[better]
            if take.numel():
                x[rows[take]] = cand[better]
                fx[rows[take]] = f[better]
                final_pred[rows[take]] = pred[better]
                found[rows[ask[adv]]] = True
                improved[take] = True
                pending[take] = False
            if progress is not None:
                progress(blackbox.total_queries)
        # A step that helped resets the surrogates; one that did not retires the one tried.
        tried[rows[improved]] = False
        failed = (~improved & use_grad).nonzero().flatten()
        if failed.numel():
            tried[rows[failed], pick[failed]] = True
        for i in rows[found[rows]].tolist():
            reasons[i] = "success"
            active[i] = False
    return finish(
        x, x0, label, clean_pred, final_pred, found, correct, reasons, blackbox, idx,
        norm, eps, budget, tgt,
    )  # fmt: skip


def _classes(ensemble: SurrogateEnsemble, x: Tensor) -> int:
    """The surrogates' class count (their scores' width; one probe, outside the counts)."""
    cached = getattr(ensemble, "_classes", None)
    if cached is None:
        with torch.no_grad():
            cached = int(ensemble.members[0](x[:1]).shape[1])
        ensemble._classes = cached  # type: ignore[assignment]
    return int(cached)
