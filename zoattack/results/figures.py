"""Figures of attack results (PNG, PDF or SVG): `zoattack run --save-images` and
`zoattack report`. Every figure is titled with what it shows: model, data set, norm, eps and the
number N of images attacked (the success rate's denominator).

Both draw success curves from :func:`~zoattack.results.rows.success_curve`, the one definition.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.base import AttackResult
from zoattack.attacks.hardlabel.oracle import DecisionResult
from zoattack.results.rows import queries_to_success, success_curve

# The --plot-format choices; PDF and SVG are vector (for papers), PNG is drawn at DPI.
PLOT_FORMATS = ("png", "pdf", "svg")
DPI = 200


def check_plot_format(fmt: str) -> str:
    """``fmt`` lower-cased, or ValueError naming the choices."""
    key = fmt.strip().lower().lstrip(".")
    if key not in PLOT_FORMATS:
        raise ValueError(f"--plot-format must be one of {', '.join(PLOT_FORMATS)}, got {fmt!r}")
    return key


def _write(fig: Any, path: Path) -> None:
    """Save in the format of ``path``'s suffix (png, pdf, svg)."""
    check_plot_format(path.suffix or "?")
    path.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    # SVG text stays text (editable, searchable) instead of glyph outlines.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, dpi=DPI)


def _with_n(title: str, n: int) -> str:
    return f"{title}, N={n:,}" if title else f"N={n:,}"


def plt_module():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: Tensor) -> None:
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
    title: str = "",
) -> Path:
    """Rows: original / adversarial / perturbation amplified to the full range, for the
    first ``count`` successful images (or the first images when none succeeded)."""
    plt = plt_module()
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
    fig.suptitle(_with_n(title, int(result.clean_correct.sum())), fontsize=8)
    fig.tight_layout()
    _write(fig, path)
    plt.close(fig)
    return path


def save_success_curve(
    path: Path,
    result: AttackResult | DecisionResult,
    budget: int,
    label: str = "",
    *,
    title: str = "",
) -> Path:
    """Fraction of initially-correct images fooled within q queries, for q up to the budget
    (a decision attack's image counts from the query where its distance first fell to eps)."""
    plt = plt_module()
    q_succ = (
        result.queries_to_eps[result.success.cpu()]
        if isinstance(result, DecisionResult)
        else result.queries[result.success]
    )
    xs, ys = success_curve(
        [int(q) for q in q_succ.tolist()],
        int(result.clean_correct.sum()),
        budget,
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.step(xs, ys, where="post", label=label or None)
    ax.set_xlabel("queries per image")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, budget)
    ax.grid(alpha=0.3)
    ax.set_title(_with_n(title, int(result.clean_correct.sum())), fontsize=9)
    if label:
        ax.legend()
    fig.tight_layout()
    _write(fig, path)
    plt.close(fig)
    return path


def distance_curve(
    curves: Sequence[Sequence[tuple[int, float]]], budget: int, points: int = 200
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Median and quartiles over images of the best distance reached within q queries, at
    ``points`` values of q up to ``budget``; an image with no adversarial point yet counts as
    infinite (a quantile may be inf: not drawn). Returns ``(qs, q25, median, q75)``."""
    qs = [budget * k / (points - 1) for k in range(points)]
    if not curves:
        return qs, [], [], []
    grid = torch.full((len(curves), points), float("inf"), dtype=torch.float64)
    q_t = torch.tensor(qs, dtype=torch.float64)
    for i, curve in enumerate(curves):
        for q, d in curve:  # checkpoints are in query order, distances non-increasing
            grid[i, q_t >= q] = d
    # "lower": the median of an even count is the lower middle value, as in the summary
    probs = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    quant = torch.quantile(grid, probs, dim=0, interpolation="lower")
    return qs, quant[0].tolist(), quant[1].tolist(), quant[2].tolist()


def save_distance_curve(
    path: Path,
    result: DecisionResult,
    budget: int,
    *,
    norm: str,
    eps: float,
    label: str = "",
    title: str = "",
) -> Path:
    """Best distance vs queries per image of a decision attack (median, quartile band) over
    initially-correct images, with ``eps`` drawn; the companion of the success curve."""
    plt = plt_module()
    keep = result.clean_correct.cpu().tolist()
    curves = [c for c, k in zip(result.curve, keep, strict=True) if k]
    qs, lo, med, hi = distance_curve(curves, budget)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if med:
        finite = [i for i, v in enumerate(med) if math.isfinite(v)]
        ax.plot([qs[i] for i in finite], [med[i] for i in finite], label=label or "median")
        band = [i for i in finite if math.isfinite(hi[i])]
        ax.fill_between(
            [qs[i] for i in band], [lo[i] for i in band], [hi[i] for i in band], alpha=0.25
        )
    ax.axhline(eps, color="gray", linestyle="--", linewidth=1, label=f"eps {eps:g}")
    ax.set_xlabel("queries per image")
    ax.set_ylabel(f"best {norm} distance (median, 25-75%)")
    ax.set_xlim(0, budget)
    ax.grid(alpha=0.3)
    ax.set_title(_with_n(title, len(curves)), fontsize=9)
    ax.legend()
    fig.tight_layout()
    _write(fig, path)
    plt.close(fig)
    return path


# -- batch figures: one panel per model and eps, one curve per optimizer ---------------------

Jobs = Sequence[Mapping[str, Any]]
RowsByJob = Mapping[str, Sequence[Mapping[str, Any]]]


def job_order(line: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key of jobs (tables, figures): model, dataset, optimizer, norm, eps, budget, seed."""
    return tuple(
        ("" if line.get(k) is None else line.get(k))
        for k in ("model", "dataset", "label", "norm", "eps", "budget", "seed")
    )


def _panels(
    jobs: Jobs, rows: RowsByJob
) -> dict[tuple[Any, ...], dict[str, list[Mapping[str, Any]]]]:
    """(model, dataset, norm, eps, largest budget) → curve label → rows (seeds pooled)."""
    panels: dict[tuple[Any, ...], dict[str, list[Mapping[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    budgets: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    for job in jobs:
        budgets[(job["model"], job["dataset"], job["norm"], job["eps"])].add(job["budget"])
    for job in sorted(jobs, key=job_order):
        pk = (job["model"], job["dataset"], job["norm"], job["eps"])
        label = job["label"] if len(budgets[pk]) == 1 else f"{job['label']} ({job['budget']:,}q)"
        panels[(*pk, max(budgets[pk]))][label].extend(rows.get(job["key"], []))
    return panels


def _grid(n: int):
    plt = plt_module()
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.set_visible(False)
    return plt, fig, flat


def _title(pk: tuple[Any, ...], curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Model, data set, norm, eps and N: images attacked per curve (seeds pooled)."""
    model, dataset, norm, eps, _ = pk
    counts = sorted(
        {sum(r["stop_reason"] != "misclassified" for r in rows) for rows in curves.values()}
    )
    n = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}"
    return f"{model} / {dataset}: {norm} eps={eps:g}, N={n}"


def save_success_curves(path: Path, jobs: Jobs, rows_by_job: RowsByJob) -> Path:
    """Success rate within q queries, one curve per optimizer, one panel per model and eps."""
    panels = _panels(jobs, rows_by_job)
    plt, fig, axes = _grid(len(panels))
    for ax, (pk, curves) in zip(axes, panels.items(), strict=False):
        top = pk[-1]
        for label, rows in curves.items():
            attacked = [r for r in rows if r["stop_reason"] != "misclassified"]
            q = [int(queries_to_success(r)) for r in attacked if int(r["success"])]
            xs, ys = success_curve(q, len(attacked), top)
            ax.step(xs, ys, where="post", label=label)
        ax.set_title(_title(pk, curves), fontsize=9)
        ax.set_xlabel("queries per image")
        ax.set_ylabel("success rate")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, top)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    _write(fig, path)
    plt.close(fig)
    return path


def save_query_histograms(path: Path, jobs: Jobs, rows_by_job: RowsByJob, bins: int = 20) -> Path:
    """Queries spent on successful images, one outline per optimizer, one panel per model/eps."""
    panels = _panels(jobs, rows_by_job)
    plt, fig, axes = _grid(len(panels))
    for ax, (pk, curves) in zip(axes, panels.items(), strict=False):
        top = pk[-1]
        edges = [top * i / bins for i in range(bins + 1)]
        for label, rows in curves.items():
            q = [int(queries_to_success(r)) for r in rows if int(r["success"])]
            if q:
                ax.hist(q, bins=edges, histtype="step", linewidth=1.4, label=f"{label} ({len(q)})")
        ax.set_title(_title(pk, curves), fontsize=9)
        ax.set_xlabel("queries to success")
        ax.set_ylabel("images")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(plt, fig, path)
