"""Surrogate ensembles: local white-box models an attacker owns, used beside the victim.

A :class:`SurrogateEnsemble` holds one or more models that take the victim's inputs and
return scores over the victim's classes. Attacks read it through two operations:

- :meth:`SurrogateEnsemble.loss`: the attack loss averaged over the members, per input;
- :meth:`SurrogateEnsemble.loss_grad`: the gradient of that mean with respect to the inputs,
  i.e. the mean of the members' loss gradients (the transfer prior of P-RGF, the first
  directions of GFCS, the ascent direction of the transfer attack);
- :meth:`SurrogateEnsemble.ods_grad`: the gradient of ``w . logits`` of one member (ODS).

Counting rule: surrogate passes are local and never victim queries; they never touch the
black box or its ledger. They are counted apart: ``forwards`` counts one per input and
member scored without a gradient, ``grads`` one per input and member whose gradient was
taken (its forward included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoattack.errors import InvalidInputError
from zoattack.losses import attack_loss
from zoattack.registry import Registry

# Attacks that run on the victim's scores with a surrogate ensemble (gfcs, transfer); each
# registers a function ``(blackbox, x0, label, ensemble, *, generator, norm, eps, budget,
# loss, target, **options) -> AttackResult``.
SURROGATE_ATTACKS: Registry = Registry("surrogate attack")

SURROGATE_COUNTING_RULE = (
    "surrogate forward and backward passes are local (white-box) and never victim queries: "
    "they are counted apart, surrogate_forwards (one per image and surrogate scored) and "
    "surrogate_grads (one per image and surrogate whose gradient was taken)"
)


class SurrogateEnsemble(nn.Module):
    """Models ``members`` (each maps ``(M, C, H, W)`` in [0, 1] to scores ``(M, classes)``)
    named ``names``; ``white_box`` marks an ensemble holding the victim itself.

    ``forward`` returns the members' mean scores (what code that wants one model sees)."""

    def __init__(
        self, members: Sequence[nn.Module], names: Sequence[str], *, white_box: bool = False
    ) -> None:
        super().__init__()
        if not members:
            raise InvalidInputError("a surrogate ensemble needs at least one model")
        if len(names) != len(members):
            raise InvalidInputError("give one name per surrogate model")
        self.members = nn.ModuleList(members)
        self.names = [str(n) for n in names]
        self.white_box = white_box
        self.forwards = 0
        self.grads = 0

    def __len__(self) -> int:
        return len(self.members)

    def counts(self) -> dict[str, int]:
        return {"surrogate_forwards": self.forwards, "surrogate_grads": self.grads}

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += x.shape[0] * len(self.members)
        return torch.stack([m(x).float() for m in self.members]).mean(dim=0)

    def _member_losses(self, x: Tensor, label: Tensor, kind: str, target: Tensor | None) -> Tensor:
        losses = [attack_loss(m(x), label, kind=kind, target=target) for m in self.members]
        return torch.stack(losses).mean(dim=0)

    def loss(
        self, x: Tensor, label: Tensor, *, kind: str = "margin", target: Tensor | None = None
    ) -> Tensor:
        """Mean attack loss over the members, per input ``(M,)`` (no gradient)."""
        self.forwards += x.shape[0] * len(self.members)
        with torch.no_grad():
            return self._member_losses(x, label, kind, target)

    def loss_with_graph(
        self, x: Tensor, label: Tensor, *, kind: str = "margin", target: Tensor | None = None
    ) -> Tensor:
        """:meth:`loss` with autograd on (``x`` may require grad); counted as gradients."""
        self.grads += x.shape[0] * len(self.members)
        return self._member_losses(x, label, kind, target)

    def loss_grad(
        self, x: Tensor, label: Tensor, *, kind: str = "margin", target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mean loss (M,), its gradient w.r.t. x (M, C, H, W))``: the mean of the
        members' loss gradients."""
        with torch.enable_grad():
            var = x.detach().clone().requires_grad_(True)
            loss = self.loss_with_graph(var, label, kind=kind, target=target)
            (grad,) = torch.autograd.grad(loss.sum(), var)
        return loss.detach(), grad.detach()

    def member_loss_grad(
        self,
        k: int,
        x: Tensor,
        label: Tensor,
        *,
        kind: str = "margin",
        target: Tensor | None = None,
    ) -> Tensor:
        """Gradient of member ``k``'s attack loss w.r.t. ``x`` (GFCS tries them one by one)."""
        self.grads += x.shape[0]
        with torch.enable_grad():
            var = x.detach().clone().requires_grad_(True)
            loss = attack_loss(self.members[k](var), label, kind=kind, target=target)
            (grad,) = torch.autograd.grad(loss.sum(), var)
        return grad.detach()

    def ods_grad(self, k: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """ODS directions: gradient of ``w . logits`` of member ``k[i]`` at ``x[i]`` (rows of
        ``w`` ``(M, classes)`` drawn in [-1, 1]); each member sees only its own rows."""
        out = torch.zeros_like(x)
        for j in range(len(self.members)):
            rows = (k == j).nonzero().flatten()
            if not rows.numel():
                continue
            self.grads += rows.numel()
            with torch.enable_grad():
                var = x.index_select(0, rows).detach().clone().requires_grad_(True)
                z = self.members[j](var).float()
                (g,) = torch.autograd.grad((z * w.index_select(0, rows)).sum(), var)
            out.index_copy_(0, rows, g.detach())
        return out


def surrogate_loss_with_graph(
    model: nn.Module, x: Tensor, label: Tensor, *, kind: str, target: Tensor | None
) -> Tensor:
    """The attack loss a surrogate (one model or an ensemble) gives ``x``, per input, with
    autograd on: an ensemble averages its members' losses (so the gradient is the mean of
    their loss gradients) and counts the passes."""
    if isinstance(model, SurrogateEnsemble):
        return model.loss_with_graph(x, label, kind=kind, target=target)
    return attack_loss(model(x), label, kind=kind, target=target)


def check_surrogate(
    model: nn.Module, name: str, input_shape: Sequence[int], classes: int, device: torch.device
) -> None:
    """One probe forward (outside every ledger): ``model`` takes ``input_shape`` inputs and
    returns ``classes`` scores, else one line saying which surrogate and what to pass."""
    shape = "x".join(str(int(s)) for s in input_shape)
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, device=device))
    except Exception as exc:  # any failure: it does not take these inputs
        raise InvalidInputError(
            f"surrogate {name} does not take the victim's {shape} inputs "
            f"({type(exc).__name__}); pass surrogates built for the victim's data set"
        ) from None
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != classes:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InvalidInputError(
            f"surrogate {name} returns scores of shape {got}, the victim has {classes} "
            "classes; pass surrogates trained on the victim's data set"
        )
