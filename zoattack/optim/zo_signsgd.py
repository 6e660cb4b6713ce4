"""ZO-signSGD: coordinate-wise sign of a zeroth-order gradient estimate."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from zoattack.objective import Objective
from zoattack.optim.base import ZORule
from zoattack.optim.registry import OPTIMIZERS
from zoattack.optim.torch_face import ZOOptimizer, _estimator_args


def zo_signsgd_update(x: Tensor, grad: Tensor, lr: Tensor | float) -> Tensor:
    """``x - lr * sign(g)`` (coordinate-wise; not ZO-Bench's sign of the scalar difference)."""
    return x - lr * grad.sign()


@OPTIMIZERS.register("zo_signsgd", description="ZO-signSGD: x <- x - lr * sign(g) (Liu et al. 2019)",
                     aliases=("signsgd", "zo_sign"), flags={"adaptive": False, "sign": True})
class ZOSignSGDRule(ZORule):
    """ZO-signSGD (Liu, Chen, Chen & Hero, ICLR 2019).

    Update: ``x_{t+1} = x_t - lr_t sign(g_t)``, coordinate-wise, ``g_t`` the sphere RGE.
    Invariant to the estimator's scale, so ``lr`` is a per-coordinate move.

    Defaults: ``lr`` required, estimator ``sphere`` (K=10, mu=1e-3), ``lr_decay="constant"``
    (the ZO-AdaMM code uses ``"sqrt"``).
    Shapes: ``x`` ``(N, *shape)``.
    Queries per step and example: the estimator's (``K+1`` by default).
    """

    name = "zo_signsgd"
    default_estimator = "sphere"

    def _update(self, objective: Objective, x: Tensor, grad: Tensor, loss: Tensor | None,
                idx: Tensor, steps: Tensor, lr: Tensor) -> tuple[Tensor, int, None]:
        return zo_signsgd_update(x, grad, lr), 0, None


class ZO_SignSGD(ZOOptimizer):  # noqa: N801 - named like the papers' code
    """torch.optim face of :class:`ZOSignSGDRule`: ``ZO_SignSGD(params, lr, n_samples=10, mu=1e-3)``."""

    rule_name = "zo_signsgd"

    def __init__(self, params: Any, lr: float = 1e-3, n_samples: int = 10, mu: float = 1e-3,
                 **kwargs: Any) -> None:
        super().__init__(params, {"lr": lr}, **_estimator_args(kwargs, n_samples, mu))
