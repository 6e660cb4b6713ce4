"""Attack losses on model scores: lower is better for the attacker, one value per input."""

from __future__ import annotations

import torch
from torch import Tensor

LOSSES = ("margin", "ce")


def _other_max(z: Tensor, cls: Tensor) -> Tensor:
    return z.scatter(1, cls.view(-1, 1), float("-inf")).amax(dim=1)


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
        if target is None:
            return z.gather(1, label.view(-1, 1)).squeeze(1) - _other_max(z, label)
        return _other_max(z, target) - z.gather(1, target.view(-1, 1)).squeeze(1)
    if kind == "ce":
        logp = torch.log_softmax(z, dim=1)
        if target is None:
            return logp.gather(1, label.view(-1, 1)).squeeze(1)
        return -logp.gather(1, target.view(-1, 1)).squeeze(1)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def is_adversarial(pred: Tensor, label: Tensor, target: Tensor | None = None) -> Tensor:
    return pred != label if target is None else pred == target
