"""A universal-perturbation job (`zoattack run --universal`): one delta for every image.

The job's data and model come from :func:`zoattack.jobs.attack.prepare`; the attack is
:func:`zoattack.attacks.universal.run_universal` with the whole set as one batch, seeded by
``spec.seed`` (not per chunk: there is one perturbation and nothing to resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zoattack.attacks.universal import UniversalResult, run_universal
from zoattack.blackbox import BlackBox
from zoattack.jobs.attack import PreparedJob
from zoattack.seeding import make_generator

UNIVERSAL_COUNTING_RULE = (
    "one query = one input scored; one evaluation of the universal "
    "perturbation scores every attacked image once"
)


@dataclass
class UniversalOutcome:
    """The perturbation ``delta`` ``(C, H, W)``, the attack's result and its summary."""

    delta: Tensor
    result: UniversalResult
    summary: dict[str, Any]


def universal_target(target: str | None, classes: int, generator: torch.Generator) -> int | None:
    """One target class for the whole set (a universal perturbation has one goal): ``None``
    (untargeted), ``"random"`` (drawn from ``generator``) or a class index."""
    if target is None:
        return None
    if target == "random":
        return int(torch.randint(0, classes, (1,), generator=generator, device=generator.device))
    if target.isdigit() and int(target) < classes:
        return int(target)
    raise ValueError(
        f"--universal takes --target random or a class index in [0, {classes - 1}], got {target!r}"
    )


def run_universal_job(job: PreparedJob) -> UniversalOutcome:
    """Attack every image of ``job`` with one perturbation; the summary counts every query."""
    spec = job.spec
    assert spec.eps is not None and spec.subspace is not None
    gen = make_generator(spec.seed, job.device)
    x, y = job.images.to(job.device), job.labels.to(job.device)
    blackbox = BlackBox(
        job.model,
        output="logits",
        budget=spec.budget,
        max_batch=spec.max_batch,
        input_shape=tuple(x.shape[1:]),
    )
    rule = spec.make_rule()
    cls = universal_target(spec.target, len(job.classes), gen)
    tgt = None if cls is None else torch.full_like(y, cls)
    t0 = time.perf_counter()
    res = run_universal(
        blackbox,
        x,
        y,
        rule,
        generator=gen,
        norm=spec.norm,
        eps=spec.eps,
        budget=spec.budget,
        loss=spec.loss,
        target=tgt,
        subspace=spec.subspace,
        surrogate=job.surrogate,
    )
    wall = time.perf_counter() - t0
    summary = {
        "images": len(y),
        "initially_correct": int(res.clean_correct.sum()),
        "fooled": int(res.fooled.sum()),
        "fooling_rate": round(res.fooling_rate or 0.0, 4),
        "evaluations": res.evaluations,
        "queries_per_image": int(res.queries.max()),
        "linf": round(res.linf, 6),
        "l2": round(res.l2, 6),
        "wall_seconds": round(wall, 3),
        "scored_inputs": blackbox.total_queries,
        "counting_rule": UNIVERSAL_COUNTING_RULE,
    }
    if spec.prior is not None:
        # The surrogate's gradients are local autograd passes: not in scored_inputs.
        summary["surrogate"] = spec.prior
    return UniversalOutcome(delta=res.delta, result=res, summary=summary)
