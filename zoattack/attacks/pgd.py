"""White-box projected gradient descent: the reference a black-box attack is measured against.

PGD (Madry, Makelov, Schmidt, Tsipras, Vladu. Towards Deep Learning Models Resistant to
Adversarial Attacks. ICLR 2018) follows the exact input gradient of the attack loss, so it needs
the model itself, not a black box. Its gradient calls are therefore *not* queries: they never go
through :class:`~zoattack.blackbox.BlackBox`, and they are counted in their own ledger
(``gradient_calls``) so nobody compares them with a query budget by mistake.

Used twice: by `zoattack eval` (robust accuracy at eps, the lower bound a black-box attack is
compared with) and by adversarial training (:mod:`zoattack.models.training`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoattack.losses import LOSSES, attack_loss, is_adversarial
from zoattack.norms import check_norm, distance, project

# Step size as a multiple of eps / steps when not given: 2.5 eps / steps (Madry et al.'s
# choice) lets a run cross the ball and come back, so it does not stop at the first corner.
STEP_FACTOR = 2.5


def check_threat(norm: str, eps: float, numel: int | None = None) -> str:
    """``check_norm`` plus the L2 bound: no eps beyond the diagonal of the ``[0, 1]`` box."""
    key = check_norm(norm, eps)
    if key == "l2" and numel is not None and eps >= math.sqrt(numel):
        raise ValueError(
            f"L2 eps={eps} covers the whole [0,1] box of {numel} values "
            f"(diagonal {math.sqrt(numel):.3g}); use a smaller eps"
        )
    return key


def random_start(x0: Tensor, norm: str, eps: float, generator: torch.Generator | None) -> Tensor:
    """A perturbation drawn uniformly from the Linf ball, or from the L2 ball (uniform
    direction, radius ``eps * U^(1/d)``), clipped so ``x0 + delta`` stays in ``[0, 1]``."""
    # Drawn where the generator lives (a CPU generator may drive a CUDA attack).
    dev = generator.device if generator is not None else x0.device
    if norm == "linf":
        u = torch.rand(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        delta = ((2 * u - 1) * eps).to(x0.device)
    else:
        g = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x0.dim() - 1))
        d = x0[0].numel()
        r = torch.rand(len(x0), generator=generator, device=dev, dtype=x0.dtype)
        delta = (g * (eps * r.pow(1.0 / d)).view(-1, *[1] * (x0.dim() - 1))).to(x0.device)
    return (x0 + delta).clamp(0, 1) - x0


def _step(delta: Tensor, grad: Tensor, norm: str, alpha: float) -> Tensor:
    """One descent step on the loss (the attacker minimises it)."""
    if norm == "linf":
        return delta - alpha * grad.sign()
    g = grad.flatten(1)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return delta - alpha * g.view_as(delta)


@dataclass
class PGDResult:
    """Per image: the best point found, whether it fools the model, and the work spent.

    ``gradient_calls`` counts model passes on that image until its first success (every pass
    when it never succeeds): a pass is a forward and backward at an iterate; the check after
    each run's last step is a forward pass and counts as one too. None of them is a query.
    """

    x_adv: Tensor
    success: Tensor
    final_pred: Tensor
    gradient_calls: Tensor
    restarts: Tensor
    linf: Tensor
    l2: Tensor


class PGD:
    """Projected gradient descent with random restarts (Madry et al. 2018).

    Update (attacker minimises ``loss``, see :func:`zoattack.losses.attack_loss`):
    ``delta <- P_eps(delta - alpha * sign(grad))`` for Linf, ``delta <- P_eps(delta - alpha *
    grad / ||grad||_2)`` for L2, then clipped so ``x0 + delta`` is in ``[0, 1]``.

    Defaults: 50 steps, 1 restart, ``alpha = 2.5 eps / steps``, margin loss, random start,
    early stop per image (an image that is fooled is not attacked further, so its
    ``gradient_calls`` show how hard it was). Each restart starts from a fresh random point
    and only attacks the images no earlier restart fooled.

    Shapes: ``x0`` ``(N, C, H, W)`` in ``[0, 1]``, ``label`` ``(N,)``; the model maps
    ``(M, C, H, W)`` to logits ``(M, classes)``. Cost: at most ``restarts * (steps + 1)``
    gradient calls per image; zero black-box queries.
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 0.1,
        *,
        steps: int = 50,
        restarts: int = 1,
        step_size: float | None = None,
        loss: str = "margin",
        random_init: bool = True,
        early_stop: bool = True,
    ) -> None:
        self.norm = check_norm(norm, eps)
        self.eps = float(eps)
        if steps < 1:
            raise ValueError(f"PGD steps must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"PGD restarts must be >= 1, got {restarts}")
        if step_size is not None and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"PGD step size must be a finite number > 0, got {step_size}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step_size = float(step_size) if step_size is not None else STEP_FACTOR * eps / steps
        self.loss = loss
        self.random_init = random_init
        self.early_stop = early_stop

    def describe(self) -> str:
        return (
            f"PGD-{self.steps} x {self.restarts} restart(s), {self.norm} eps {self.eps:g}, "
            f"step {self.step_size:.4g}, {self.loss} loss"
        )

    def perturb(
        self,
        model: nn.Module,
        x0: Tensor,
        label: Tensor,
        *,
        generator: torch.Generator | None = None,
        target: Tensor | None = None,
    ) -> PGDResult:
        """Attack ``model`` (kept in its current mode; pass it in eval mode) on ``x0``."""
        check_threat(self.norm, self.eps, x0[0].numel())
        n = len(x0)
        dev = x0.device
        x_best = x0.clone()
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        calls = torch.zeros(n, dtype=torch.long, device=dev)
        restarts = torch.zeros(n, dtype=torch.long, device=dev)
        best_loss = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        final_pred = torch.empty(n, dtype=torch.long, device=dev)
        for r in range(self.restarts):
            idx = (
                (~success).nonzero().squeeze(1) if self.early_stop else torch.arange(n, device=dev)
            )
            if len(idx) == 0:
                break
            restarts[idx] += 1
            xs, ys = x0[idx], label[idx]
            ts = target[idx] if target is not None else None
            if self.random_init or r > 0:
                delta = random_start(xs, self.norm, self.eps, generator)
            else:
                delta = torch.zeros_like(xs)
            live = torch.ones(len(idx), dtype=torch.bool, device=dev)  # not yet fooled
            for t in range(self.steps + 1):
                sel = (
                    live.nonzero().squeeze(1)
                    if self.early_stop
                    else torch.arange(len(idx), device=dev)
                )
                if len(sel) == 0:
                    break
                x = (xs[sel] + delta[sel]).detach().requires_grad_(t < self.steps)
                with torch.enable_grad():
                    logits = model(x)
                    loss = attack_loss(
                        logits, ys[sel], kind=self.loss, target=ts[sel] if ts is not None else None
                    )
                calls[idx[sel]] += 1
                pred = logits.argmax(1).detach()
                fooled = is_adversarial(pred, ys[sel], ts[sel] if ts is not None else None)
                gi = idx[sel]
                # Keep the best point per image: any fooling point beats none, then lower loss.
                lv = loss.detach()
                better = (fooled & ~success[gi]) | ((fooled == success[gi]) & (lv < best_loss[gi]))
                x_best[gi[better]] = x.detach()[better]
                best_loss[gi[better]] = lv[better]
                final_pred[gi[better]] = pred[better]
                success[gi] |= fooled
                if self.early_stop:
                    live[sel[fooled]] = False
                if t == self.steps:
                    break
                (grad,) = torch.autograd.grad(loss.sum(), x)
                step_sel = ~fooled if self.early_stop else torch.ones_like(fooled)
                s = sel[step_sel]
                d = _step(delta[s], grad[step_sel], self.norm, self.step_size)
                d = project(d, self.norm, self.eps)
                delta[s] = (xs[s] + d).clamp(0, 1) - xs[s]
        return PGDResult(
            x_adv=x_best,
            success=success,
            final_pred=final_pred,
            gradient_calls=calls,
            restarts=restarts,
            linf=distance(x_best, x0, "linf"),
            l2=distance(x_best, x0, "l2"),
        )


def pgd_examples(
    model: nn.Module,
    x0: Tensor,
    label: Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training-time PGD on cross-entropy (Madry et al.'s inner maximisation): random start,
    ``steps`` sign (Linf) or normalised (L2) steps, the last iterate returned detached.

    Cost: ``steps`` forward+backward passes of the batch; the model's parameter gradients are
    neither computed nor touched (gradients are taken with respect to the input only).
    """
    alpha = step_size if step_size is not None else STEP_FACTOR * eps / steps
    delta = random_start(x0, norm, eps, generator)
    for _ in range(steps):
        x = (x0 + delta).detach().requires_grad_(True)
        with torch.enable_grad():
            loss = attack_loss(model(x), label, kind="ce").sum()
        (grad,) = torch.autograd.grad(loss, x)
        d = project(_step(delta, grad, norm, alpha), norm, eps)
        delta = (x0 + d).clamp(0, 1) - x0
    return (x0 + delta).detach()


def trades_examples(
    model: nn.Module,
    x0: Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES' inner maximisation (Zhang et al. ICML 2019): from ``x0 + 0.001 N(0, I)``, ascend
    ``KL(f(x0) || f(x))`` with sign (Linf) or normalised (L2) steps inside the ball.

    Cost: one forward of ``x0`` plus ``steps`` forward+backward passes.
    """
    alpha = step_size if step_size is not None else STEP_FACTOR * eps / steps
    with torch.no_grad():
        p_clean = torch.softmax(model(x0), dim=1)
    dev = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
    delta = project(0.001 * noise, norm, eps)
    delta = (x0 + delta).clamp(0, 1) - x0
    for _ in range(steps):
        x = (x0 + delta).detach().requires_grad_(True)
        with torch.enable_grad():
            kl = nn.functional.kl_div(torch.log_softmax(model(x), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x)
        # Ascent on the KL = descent on its negative.
        d = project(_step(delta, -grad, norm, alpha), norm, eps)
        delta = (x0 + d).clamp(0, 1) - x0
    return (x0 + delta).detach()


__all__ = ["PGD", "PGDResult", "check_threat", "pgd_examples", "random_start", "trades_examples"]
