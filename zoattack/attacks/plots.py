"""PNG figures for attack results (``zoattack run --save-images``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from zoattack.attacks.base import AttackResult


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: Tensor) -> None:  # type: ignore[no-untyped-def]
    img = img.detach().cpu().float()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def save_image_grid(
    path: Path,
    x0: Tensor,
    result: AttackResult,
    *,
    classes: list[str] | None = None,
    count: int = 8,
) -> Path:
    """Rows: original / adversarial / perturbation amplified to the full range, for the
    first ``count`` successful images (or the first images when none succeeded)."""
    plt = _plt()
    chosen = result.success.nonzero().flatten()[:count]
    if chosen.numel() == 0:
        chosen = torch.arange(min(count, len(result.label)))
    cols = max(1, chosen.numel())
    fig, axes = plt.subplots(3, cols, figsize=(1.6 * cols, 5.0), squeeze=False)

    def name(k: int) -> str:
        return classes[k] if classes and k < len(classes) else str(k)

    for j, i in enumerate(chosen.tolist()):
        delta = (result.x_adv[i] - x0[i]).detach().cpu()
        amp = delta / (2 * delta.abs().max().clamp_min(1e-12)) + 0.5
        _show(axes[0][j], x0[i])
        axes[0][j].set_title(f"{name(int(result.label[i]))}", fontsize=7)
        _show(axes[1][j], result.x_adv[i])
        axes[1][j].set_title(
            f"-> {name(int(result.final_pred[i]))} ({int(result.queries[i])}q)", fontsize=7
        )
        _show(axes[2][j], amp)
    axes[0][0].set_ylabel("original")
    axes[1][0].set_ylabel("adversarial")
    axes[2][0].set_ylabel("perturbation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_success_curve(path: Path, result: AttackResult, budget: int, label: str = "") -> Path:
    """Fraction of initially-correct images fooled within q queries, for q up to the budget."""
    plt = _plt()
    attacked = int(result.clean_correct.sum())
    q = torch.sort(result.queries[result.success]).values.double()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [0.0] + q.tolist() + [float(budget)]
    ys = [0.0] + [(k + 1) / max(attacked, 1) for k in range(len(q))] + [len(q) / max(attacked, 1)]
    ax.step(xs, ys, where="post", label=label or None)
    ax.set_xlabel("queries per image")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, budget)
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
