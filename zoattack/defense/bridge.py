"""The autograd bridge: exact backprop up to the latent, a zeroth-order estimate beyond it.

ZO-AE-DS (Zhang et al., ICLR 2022, Eq. 8 / Appendix A): for a fixed estimate ``a`` of
d loss / d z, the gradient of ``<z, stopgrad(a)>`` with respect to the white-box parameters is
the chain-rule product ``(dz/dtheta)^T a``. Wrapping that in a ``torch.autograd.Function``
lets ordinary torch optimizers train the denoiser and encoder while the black box is only
ever queried, and any registered estimator (``sphere`` = RGE, ``coordinate`` = CGE, ``dap``,
``lizo``, ...) supplies ``a``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zoattack.blackbox import BlackBox
from zoattack.errors import ZOAttackError
from zoattack.estimators.base import GradientEstimator


def check_scores_blackbox(blackbox: BlackBox) -> None:
    """Training needs class scores: cross-entropy is meaningless on top-1 labels alone."""
    if blackbox.output not in ("logits", "probs"):
        raise ZOAttackError(
            f"training needs a black box that returns scores (logits or probs), this one "
            f"returns {blackbox.output}; query it with output='logits' or 'probs' (labels are "
            "enough for certification only)"
        )


class PseudoLabelCE:
    """Objective ``g(v) = CE(f(post(v)), y[owner])`` for the estimators (lower is better).

    ``post`` is the frozen decoder (ZO-AE-DS: ``v`` is a latent) or a clamp to [0, 1]
    (ZO-DS: ``v`` is an image); ``y`` holds the black box's own top-1 on each clean training
    image, indexed by the global example id the estimator passes as ``owner``. Scores that are
    probabilities give ``-log p``. One query per point, charged to its owner.
    """

    def __init__(
        self, blackbox: BlackBox, targets: Tensor, post: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        check_scores_blackbox(blackbox)
        self.blackbox = blackbox
        self.targets = targets
        self.post = post

    def __call__(self, points: Tensor, owner: Tensor) -> Tensor:
        with torch.no_grad():
            imgs = self.post(points) if self.post is not None else points
            imgs = imgs.clamp(0.0, 1.0)
            scores = self.blackbox.query(imgs, owner).float()
            y = self.targets.to(scores.device)[owner.to(scores.device)]
            if self.blackbox.output == "probs":
                return -scores.gather(1, y[:, None]).squeeze(1).clamp_min(1e-12).log()
            return torch.logsumexp(scores, 1) - scores.gather(1, y[:, None]).squeeze(1)


class _ZOFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        v: Tensor,
        objective: PseudoLabelCE,
        estimator: GradientEstimator,
        generator: torch.Generator,
        idx: Tensor,
        info: dict[str, Any],
    ) -> Tensor:
        x = v.detach()
        # f(v) is queried once up front and handed to the estimator, so forward differences
        # reuse it as their base point and central ones still report the loss.
        fx = objective(x, idx.to("cpu")).to(torch.float64)
        est = estimator.estimate(objective, x, generator=generator, idx=idx, fx=fx)
        info["queries"] = est.queries.cpu() + 1
        ctx.save_for_backward(est.grad.to(v.dtype))
        return fx.to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (g,) = ctx.saved_tensors
        scale = grad_out.reshape(-1, *([1] * (g.dim() - 1)))
        return scale * g, None, None, None, None, None


def zo_loss(
    v: Tensor,
    objective: PseudoLabelCE,
    estimator: GradientEstimator,
    *,
    generator: torch.Generator,
    idx: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-example loss ``g(v)`` ``(N,)`` whose backward is the ZO estimate of ``dg/dv``.

    Args:
        v: ``(N, *shape)`` latents (or images), part of an autograd graph.
        objective: queries the black box; ``estimator``: any registered gradient estimator.
        generator: the estimator's randomness (on ``v``'s device); idx: global example ids.

    Returns:
        ``(loss, queries)``: the loss ``(N,)`` and the queries each example spent ``(N,)``
        (1 for ``g(v)`` plus the estimator's own; forward differences reuse ``g(v)``).
    """
    info: dict[str, Any] = {}
    loss = _ZOFunction.apply(v, objective, estimator, generator, idx, info)
    return loss, info["queries"]
