"""Randomized-smoothing certification (Cohen, Rosenfeld, Kolter, ICML 2019): PREDICT and CERTIFY.

The smoothed classifier is ``g(x) = argmax_c P[F(x + delta) = c]``, ``delta ~ N(0, sigma^2 I)``
added in [0, 1] pixel space, where ``F`` only needs top-1 labels (``BlackBox(output="labels")``).
CERTIFY: N0 draws pick the candidate class c; N fresh draws count it; the one-sided
Clopper-Pearson lower bound ``pA`` at level ``1 - alpha`` gives radius ``sigma * PhiInv(pA)``,
or abstains (-1, radius 0) when ``pA < 1/2``. PREDICT: n draws, two-sided binomial test of the
top two counts, abstains when the p-value exceeds alpha. Queries: N0 + N (CERTIFY), n (PREDICT)
per image, each charged to the image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoattack.blackbox import BlackBox
from zoattack.seeding import make_generator

ABSTAIN = -1
RADII = (0.0, 0.25, 0.5, 0.75)
COLUMNS = ("index", "label", "prediction", "radius", "correct", "abstain", "seconds", "queries")


def check_certify_args(sigma: float, n0: int, n: int, alpha: float, batch: int = 1) -> None:
    """One clear ValueError per bad setting (the CLI prints it and exits 2)."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(
            f"--sigma must be > 0 (noise standard deviation in [0,1] pixel units), got {sigma}"
        )
    if n0 < 1 or n < 1:
        raise ValueError(f"--n0 and --n must be >= 1, got {n0} and {n}")
    if n0 > n:
        raise ValueError(
            f"--n0 ({n0}) must not exceed --n ({n}): N0 only picks the class, N "
            "draws certify it (Cohen et al. use 100 and 10,000)"
        )
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must lie in (0, 1), got {alpha} (0.001 is the usual choice)")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from ``k``
    successes in ``n``: the alpha quantile of Beta(k, n - k + 1) (0 when k = 0). Equals
    Cohen's ``proportion_confint(k, n, alpha=2*alpha, method="beta")[0]``."""
    from scipy.stats import beta

    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` draws (all votes for one class)."""
    from scipy.stats import norm

    return sigma * float(norm.ppf(lower_confidence_bound(n, n, alpha)))


class Smooth:
    """Cohen et al.'s smoothed classifier over any label-returning ``classify``.

    Args:
        classify: ``(noisy (M, *shape), owner (M,)) -> labels (M,)``; must reach the model only
            through a :class:`BlackBox` (see :func:`blackbox_classifier`).
        num_classes: number of classes.
        sigma: noise standard deviation in [0, 1] pixel units (the noise is not clipped).
        batch: noisy copies scored per call.
    """

    def __init__(
        self,
        classify: Callable[[Tensor, Tensor], Tensor],
        num_classes: int,
        sigma: float,
        batch: int = 1000,
    ) -> None:
        check_certify_args(sigma, 1, 1, 0.5, batch)
        self.classify, self.num_classes = classify, int(num_classes)
        self.sigma, self.batch = float(sigma), int(batch)

    def counts(self, x: Tensor, num: int, *, generator: torch.Generator, owner: int = 0) -> Tensor:
        """Votes ``(num_classes,)`` over ``num`` noisy copies of one image ``x`` ``(*shape)``."""
        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        left = num
        while left > 0:
            m = min(self.batch, left)
            noise = torch.randn(
                (m, *x.shape), generator=generator, device=generator.device, dtype=x.dtype
            )
            labels = self.classify(
                x.unsqueeze(0) + self.sigma * noise.to(x.device),
                torch.full((m,), owner, dtype=torch.int64),
            )
            counts += torch.bincount(labels.reshape(-1).cpu(), minlength=self.num_classes)
            left -= m
        return counts

    def counts_many(
        self, xs: Tensor, num: int, *, generators: Sequence[torch.Generator], owners: Sequence[int]
    ) -> Tensor:
        """Votes ``(K, num_classes)`` over ``num`` noisy copies of each of ``K`` images
        ``xs`` ``(K, *shape)``, scored together: one classify call per round holds up to
        ``batch`` copies of every image.

        Each image's noise is drawn from its own generator in the same chunks as
        :meth:`counts` draws it, so the noise (and, for a model whose outputs do not depend on
        what else is in the batch, the votes) equals K separate :meth:`counts` calls.
        """
        k = xs.shape[0]
        counts = torch.zeros(k, self.num_classes, dtype=torch.int64)
        left = num
        while left > 0:
            m = min(self.batch, left)
            noisy = []
            for x, gen in zip(xs, generators, strict=True):
                noise = torch.randn((m, *x.shape), generator=gen, device=gen.device, dtype=x.dtype)
                noisy.append(x.unsqueeze(0) + self.sigma * noise.to(x.device))
            owner = torch.tensor([int(o) for o in owners], dtype=torch.int64).repeat_interleave(m)
            labels = self.classify(torch.cat(noisy), owner).reshape(k, m).cpu()
            counts += torch.nn.functional.one_hot(labels, self.num_classes).sum(1)
            left -= m
        return counts

    def certify_many(
        self,
        xs: Tensor,
        n0: int,
        n: int,
        alpha: float,
        *,
        generators: Sequence[torch.Generator],
        owners: Sequence[int],
    ) -> list[tuple[int, float]]:
        """CERTIFY ``K`` images at once (see :meth:`counts_many`); one result per image."""
        from scipy.stats import norm

        check_certify_args(self.sigma, n0, n, alpha, self.batch)
        c_hat = self.counts_many(xs, n0, generators=generators, owners=owners).argmax(1)
        votes = self.counts_many(xs, n, generators=generators, owners=owners)
        results = []
        for i in range(xs.shape[0]):
            p_a = lower_confidence_bound(int(votes[i, int(c_hat[i])]), n, alpha)
            if p_a < 0.5:
                results.append((ABSTAIN, 0.0))
            else:
                results.append((int(c_hat[i]), self.sigma * float(norm.ppf(p_a))))
        return results

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        *,
        generator: torch.Generator,
        owner: int = 0,
    ) -> tuple[int, float]:
        """CERTIFY -> ``(class, radius)``, or ``(-1, 0.0)`` on abstention."""
        from scipy.stats import norm

        check_certify_args(self.sigma, n0, n, alpha, self.batch)
        c_hat = int(self.counts(x, n0, generator=generator, owner=owner).argmax())
        n_a = int(self.counts(x, n, generator=generator, owner=owner)[c_hat])
        p_a = lower_confidence_bound(n_a, n, alpha)
        if p_a < 0.5:
            return ABSTAIN, 0.0
        return c_hat, self.sigma * float(norm.ppf(p_a))

    def predict(
        self, x: Tensor, n: int, alpha: float, *, generator: torch.Generator, owner: int = 0
    ) -> int:
        """PREDICT -> class, or -1 when the top two counts are not significantly apart."""
        from scipy.stats import binomtest

        check_certify_args(self.sigma, 1, n, alpha, self.batch)
        counts = self.counts(x, n, generator=generator, owner=owner)
        top2 = counts.topk(2)
        c1, c2 = int(top2.values[0]), int(top2.values[1])
        if binomtest(c1, c1 + c2, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])


def blackbox_classifier(
    blackbox: BlackBox, front: torch.nn.Module | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """``classify`` for :class:`Smooth`: the defender's ``front`` (no queries), then one
    black-box query per noisy copy. Works with any black-box output (argmax of scores)."""

    def classify(noisy: Tensor, owner: Tensor) -> Tensor:
        with torch.no_grad():
            x = front(noisy) if front is not None else noisy
            out = blackbox.query(x, owner)
        return out if out.dim() == 1 else out.argmax(-1)

    return classify


def image_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Each image's noise comes from its own seed, so results do not depend on which images
    ran before it, and a resumed certification draws exactly what the first run would have."""
    return make_generator((int(seed) << 32) + int(index), device)


def certified_accuracy(
    rows: Sequence[dict[str, Any]], radii: Sequence[float] = RADII
) -> dict[str, float]:
    """Fraction of rows that are correct with radius >= r (Cohen's inclusive convention)."""
    total = max(len(rows), 1)
    return {
        f"{r:g}": sum(1 for row in rows if int(row["correct"]) and float(row["radius"]) >= r)
        / total
        for r in radii
    }


def certify_image(
    smooth: Smooth,
    x: Tensor,
    label: int,
    index: int,
    *,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    seed: int = 0,
    blackbox: BlackBox | None = None,
) -> dict[str, Any]:
    """CERTIFY one image ``x`` (dataset index ``index``): its row (the columns of
    :data:`COLUMNS`). ``queries`` come from ``blackbox``'s ledger (N0 + N without one).
    Writing rows durably is the caller's part (:func:`zoattack.jobs.certify.certify_images`)."""
    t0 = time.perf_counter()
    before = blackbox.total_queries if blackbox is not None else 0
    gen = image_generator(seed, int(index), x.device)
    pred, radius = smooth.certify(x, n0, n, alpha, generator=gen, owner=int(index))
    return {
        "index": int(index),
        "label": int(label),
        "prediction": pred,
        "radius": round(radius, 6),
        "correct": int(pred == int(label)),
        "abstain": int(pred == ABSTAIN),
        "seconds": round(time.perf_counter() - t0, 4),
        "queries": (blackbox.total_queries - before) if blackbox is not None else n0 + n,
    }


def certify_group(
    smooth: Smooth,
    xs: Tensor,
    labels: Sequence[int],
    indices: Sequence[int],
    *,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    seed: int = 0,
    blackbox: BlackBox | None = None,
) -> list[dict[str, Any]]:
    """:func:`certify_image` for several images scored together (:meth:`Smooth.certify_many`):
    the same per-image noise, the same rows; ``seconds`` is the group's time shared evenly,
    ``queries`` each image's own count in ``blackbox``'s ledger."""
    if len(indices) == 1:
        return [
            certify_image(
                smooth,
                xs[0],
                int(labels[0]),
                int(indices[0]),
                n0=n0,
                n=n,
                alpha=alpha,
                seed=seed,
                blackbox=blackbox,
            )
        ]
    t0 = time.perf_counter()
    owners = torch.tensor([int(i) for i in indices], dtype=torch.int64)
    before = blackbox.queries_of(owners).tolist() if blackbox is not None else [0] * len(owners)
    gens = [image_generator(seed, int(i), xs.device) for i in indices]
    results = smooth.certify_many(xs, n0, n, alpha, generators=gens, owners=owners.tolist())
    after = blackbox.queries_of(owners).tolist() if blackbox is not None else None
    seconds = round((time.perf_counter() - t0) / len(indices), 4)
    rows = []
    for k, ((pred, radius), y, idx) in enumerate(zip(results, labels, indices, strict=True)):
        rows.append(
            {
                "index": int(idx),
                "label": int(y),
                "prediction": pred,
                "radius": round(radius, 6),
                "correct": int(pred == int(y)),
                "abstain": int(pred == ABSTAIN),
                "seconds": seconds,
                "queries": int(after[k] - before[k]) if after is not None else n0 + n,
            }
        )
    return rows


def summarize(rows: Sequence[dict[str, Any]], radii: Sequence[float] = RADII) -> dict[str, Any]:
    return {
        "images": len(rows),
        "certified_accuracy": certified_accuracy(rows, radii),
        "abstained": sum(int(r["abstain"]) for r in rows),
        "mean_radius_correct": (
            sum(float(r["radius"]) for r in rows if int(r["correct"]))
            / max(1, sum(int(r["correct"]) for r in rows))
        ),
        "queries": sum(int(r["queries"]) for r in rows),
        "seconds": round(sum(float(r["seconds"]) for r in rows), 2),
    }


def save_curve(
    path: str | Path,
    curves: dict[str, Sequence[dict[str, Any]]],
    sigma: float,
    r_max: float | None = None,
) -> Path:
    """Certified accuracy against the l2 radius (0 to ``r_max`` in steps of 0.01), one line
    per labelled set of rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = (
        r_max
        if r_max is not None
        else max([1.0] + [float(r["radius"]) for rows in curves.values() for r in rows])
    )
    grid = [i / 100 for i in range(math.ceil(top * 100) + 1)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, rows in curves.items():
        acc = certified_accuracy(rows, grid)
        ax.plot(grid, list(acc.values()), label=label)
    ax.set_xlabel("l2 radius (pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    ax.set_title(f"randomized smoothing, sigma = {sigma:g}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
