"""Attack losses on model scores: lower is better for the attacker, one value per input."""

from __future__ import annotations

import torch
from torch import Tensor

LOSSES = ("margin", "ce")


def _other_max(z: Tensor, cls: Tensor) -> Tensor:
    """``max_{j != cls} z_j`` per row; ``cls`` is ``(M, 1)``."""
    return z.scatter(1, cls, float("-inf")).amax(dim=1)


def attack_loss(
    scores: Tensor, label: Tensor, *, kind: str = "margin", target: Tensor | None = None
) -> Tensor:
    """Loss per input ``(M,)`` from scores ``(M, C)`` (logits, or log-probabilities).

    - margin, untargeted: ``z_y - max_{j!=y} z_j`` (negative once misclassified);
    - margin, targeted: ``max_{j!=t} z_j - z_t`` (negative once classified as ``t``);
    - ce, untargeted: ``-CE(z, y)``; ce, targeted: ``CE(z, t)``.
    """
    z = scores.double()
    if kind == "margin":
        cls = (label if target is None else target).view(-1, 1)
        true = z.gather(1, cls).squeeze(1)
        return true - _other_max(z, cls) if target is None else _other_max(z, cls) - true
    if kind == "ce":
        logp = torch.log_softmax(z, dim=1)
        if target is None:
            return logp.gather(1, label.view(-1, 1)).squeeze(1)
        return -logp.gather(1, target.view(-1, 1)).squeeze(1)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def is_adversarial(pred: Tensor, label: Tensor, target: Tensor | None = None) -> Tensor:
    return pred != label if target is None else pred == target
