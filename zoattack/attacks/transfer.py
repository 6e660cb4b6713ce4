"""``transfer``: PGD on a surrogate ensemble, then one victim check per image.

The zero-query baseline of every surrogate table: whatever a score-based attack with
surrogates reaches, it should beat what the surrogates' own adversarial examples reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.base import AttackResult, resolve_target
from zoattack.attacks.surrogates import SURROGATE_ATTACKS, SurrogateEnsemble
from zoattack.blackbox import BlackBox
from zoattack.losses import attack_loss, is_adversarial
from zoattack.norms import check_norm, distance, inside, project

# PGD iterations (Madry et al. 2018 run 7-20 at CIFAR scale; transfer studies 10).
STEPS = 10


def clean_check(
    blackbox: BlackBox,
    x0: Tensor,
    label: Tensor,
    idx: Tensor,
    target: Tensor | str | int | None,
    generator: torch.Generator,
    loss: str,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Score the clean images (1 query each): ``(clean predictions, resolved target, clean
    losses, initially correct)`` (for a targeted attack, images already of the target class
    are not attacked)."""
    scores = blackbox.query(x0, idx).to(x0.device)
    tgt = resolve_target(target, scores, label, generator)
    pred = scores.argmax(dim=1)
    correct = pred == label
    if tgt is not None:
        correct &= tgt != label
    return pred, tgt, attack_loss(scores, label, kind=loss, target=tgt), correct


def step_direction(grad: Tensor, norm: str) -> Tensor:
    """The steepest-descent unit step for ``norm``: ``sign(g)`` (Linf) or ``g / ||g||_2``."""
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / n.view(-1, *[1] * (grad.dim() - 1))


def finish(
    x_adv: Tensor,
    x0: Tensor,
    label: Tensor,
    clean_pred: Tensor,
    final_pred: Tensor,
    found: Tensor,
    correct: Tensor,
    reasons: list[str],
    blackbox: BlackBox,
    idx: Tensor,
    norm: str,
    eps: float,
    budget: int,
    target: Tensor | None,
) -> AttackResult:
    """The per-image result, checked to be inside the threat model and the budget."""
    if not bool(inside(x_adv, x0, norm, eps).all()):
        raise AssertionError("internal error: an image left the threat model")
    queries = blackbox.queries_of(idx).clone()
    if bool((queries > budget).any()):
        raise AssertionError("internal error: an image exceeded its query budget")
    return AttackResult(
        x_adv=x_adv,
        label=label,
        clean_pred=clean_pred,
        final_pred=final_pred,
        success=found & correct,
        queries=queries,
        stop_reason=reasons,
        linf=distance(x_adv, x0, "linf"),
        l2=distance(x_adv, x0, "l2"),
        clean_correct=correct,
        target=target,
    )


def _describe(norm: str, lr: float, eps: float) -> str:
    kind = "sign steps" if norm == "linf" else "L2-normalised steps"
    return (
        f"PGD on the surrogates' mean loss, {STEPS} {kind} of {lr:g} from a random start in "
        "the ball, then one victim check per image (the zero-query baseline)"
    )


@SURROGATE_ATTACKS.register(
    "transfer",
    description="PGD on the surrogate ensemble's mean loss, then one victim check per image "
    "(the zero-query baseline)",
    flags={"norms": ("linf", "l2"), "method": _describe, "defaults": "10 steps, lr eps/4"},
)
def transfer(
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
    steps: int = STEPS,
    progress: Callable[[int], None] | None = None,
    **unused: Any,
) -> AttackResult:
    """Transfer attack: projected gradient descent on the surrogates, checked on the victim.

    Method: from a random start in the ball (uniform in the Linf cube; for L2 a uniform
    direction at a uniform radius), ``steps`` PGD steps descend the ensemble's mean attack
    loss (:meth:`SurrogateEnsemble.loss_grad`: the mean of the members' loss gradients;
    ``margin``: ``z_y - max_{j!=y} z_j``), ``x <- Proj(x - lr * u(g))`` with ``u`` the sign
    (Linf) or the L2-normalised gradient, clipped to [0, 1]. The victim sees the result once.

    Defaults: ``steps = 10``, ``lr = eps/4`` (set by the job; the usual PGD choice of a step
    that can cross the ball in a few iterations), margin loss.
    Shapes: ``x0`` ``(N, C, H, W)`` in [0, 1], ``label`` ``(N,)``; all images in one batch.
    Query cost per image: 2 victim queries (the clean check, then the one check of the
    transfer example; misclassified images stop after the clean check). Surrogate cost:
    ``steps`` gradient passes per image and surrogate (counted apart, never queries).
    Deterministic given ``generator`` (the random start).
    """
    norm = check_norm(norm, eps)
    lr = eps / 4 if lr is None else lr
    n = x0.shape[0]
    idx = torch.arange(n, device=x0.device)
    clean_pred, tgt, _, correct = clean_check(blackbox, x0, label, idx, target, generator, loss)
    if progress is not None:
        progress(blackbox.total_queries)
    if norm == "linf":
        delta = (torch.rand(x0.shape, generator=generator, device=generator.device) * 2 - 1) * eps
    else:
        g = torch.randn(x0.shape, generator=generator, device=generator.device)
        r = torch.rand(n, generator=generator, device=generator.device) * eps
        delta = step_direction(g, "l2") * r.view(-1, 1, 1, 1)
    delta = delta.to(x0.device, x0.dtype)
    x = (x0 + delta).clamp(0, 1)
    act = correct.nonzero().flatten()
    if act.numel():
        xa, x0a, ya = x[act], x0[act], label[act]
        ta = tgt[act] if tgt is not None else None
        for _ in range(steps):
            _, grad = ensemble.loss_grad(xa, ya, kind=loss, target=ta)
            xa = x0a + project(xa - lr * step_direction(grad, norm) - x0a, norm, eps)
            xa = xa.clamp(0, 1)
        x[act] = xa
    final_pred = clean_pred.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x0.device)
    reasons = ["misclassified" if not c else "steps" for c in correct.tolist()]
    if act.numel():
        pred = blackbox.query(x[act], act).to(x0.device).argmax(dim=1)
        final_pred[act] = pred
        ok = is_adversarial(pred, label[act], tgt[act] if tgt is not None else None)
        found[act] = ok
        for i, hit in zip(act.tolist(), ok.tolist(), strict=True):
            if hit:
                reasons[i] = "success"
    if progress is not None:
        progress(blackbox.total_queries)
    x_adv = torch.where(correct.view(-1, 1, 1, 1), x, x0)
    return finish(
        x_adv, x0, label, clean_pred, final_pred, found, correct, reasons, blackbox, idx,
        norm, eps, budget, tgt,
    )  # fmt: skip
