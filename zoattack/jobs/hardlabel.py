"""Hard-label (decision-based) attack jobs: `zoattack run --attack NAME`.

A spec with ``attack`` set runs a registered decision attack (``sign_opt``, ``hsja``, ``rays``,
``opt``; see :mod:`zoattack.attacks.hardlabel`) through a labels-only black box: a model that
only answers labels (a ``serve --output labels`` server, a ``ScoreAPI`` returning a class) or
any model wrapped by :class:`~zoattack.blackbox.LabelsOnly` (``labels_only=True``), so attack
code never holds a score. Chunks, seeds, rows, resume and executors are those of
:mod:`zoattack.jobs.attack`; this module holds what differs: which options apply, the starts
of targeted attacks, and the chunk itself.

Which options apply: ``opt`` takes the core's ``optimizer`` (a gradient rule), ``estimator``,
``samples``, ``lr``, ``mu``, ``difference`` and ``subspace``; ``sign_opt`` takes ``samples``
(its directions per step) and ``subspace``; ``hsja`` takes ``subspace``; ``rays`` none. Any
other given option is refused with one line (it would otherwise be silently ignored).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from zoattack.attacks.base import AttackInterrupted
from zoattack.attacks.hardlabel import (
    DECISION_ATTACKS,
    DecisionAttack,
    create_decision_attack,
    target_starts,
)
from zoattack.blackbox import DECISION_HINT, BlackBox, LabelsOnly
from zoattack.errors import QueryBudgetExceeded, ZOAttackError
from zoattack.norms import check_norm
from zoattack.optim import OPTIMIZERS
from zoattack.results.rows import DECISION_COUNTING_RULE, rows_of

if TYPE_CHECKING:
    from zoattack.jobs.attack import AttackSpec, ChunkOutcome, PreparedJob

# spec field -> the option it sets, per attack (fields of AttackSpec not listed are refused)
ATTACK_OPTIONS: dict[str, dict[str, str]] = {
    "opt": {
        "optimizer": "optimizer",
        "estimator": "estimator",
        "samples": "num_samples",
        "lr": "lr",
        "mu": "mu",
        "difference": "difference",
        "subspace": "subspace",
    },
    "sign_opt": {"samples": "num_directions", "subspace": "subspace"},
    "hsja": {"subspace": "subspace"},
    "rays": {},
}
# `--attack auto`: the attack benchmarks/hardlabel.py found best per norm (docs/benchmarks/
# hardlabel.md: Sign-OPT had the lowest median L2 distance in 3 of 4 settings, RayS the best
# Linf success at 1,000 queries on both victims).
DEFAULT_ATTACK = {"l2": "sign_opt", "linf": "rays"}
# Options of score-based rules that no decision attack takes.
_RULE_FIELDS = ("optimizer", "estimator", "samples", "lr", "mu", "difference", "momentum")
# Where targeted starts come from when no --init-from is given: the first POOL test images.
POOL = 1000


def resolve_decision(spec: AttackSpec) -> AttackSpec:
    """Validate a decision-attack spec and fill its defaults (norm, eps, attack name,
    subspace); options the attack does not take are refused. Builds the attack once, so
    invalid hyperparameters fail here, before any model is built."""
    from zoattack.jobs.attack import resolve_eps

    norm = spec.norm.lower()
    eps = resolve_eps(spec.eps, spec.dataset, norm)
    norm = check_norm(norm, eps)
    attack = str(spec.attack)
    if attack.lower() == "auto":  # check_norm admits l2 and linf only
        attack = DEFAULT_ATTACK[norm]
    entry = DECISION_ATTACKS.get(attack)
    name = entry.name
    norms = tuple(entry.flags.get("norms", ("l2", "linf")))
    if norm not in norms:
        raise ValueError(f"--attack {name} supports --norm {' or '.join(norms)}, got {norm}")
    takes = ATTACK_OPTIONS.get(name, {})
    for f in (*_RULE_FIELDS, "subspace"):
        value = getattr(spec, f)
        if value is not None and f not in takes:
            if f == "subspace" and value == "full":
                continue
            what = ", ".join("--" + k for k in takes) or "no options"
            raise ValueError(
                f"--{f} does not apply to --attack {name} (it takes {what}); drop --{f}"
            )
    if spec.loss != "margin":
        raise ValueError(
            f"--loss is the score-based attacks' objective; --attack {name} sees labels only "
            "(drop --loss)"
        )
    if spec.target in ("least-likely", "least_likely"):
        raise ValueError(
            "--target least-likely needs the model's scores; a hard-label attack sees labels "
            "only: pass --target random or a class index"
        )
    optimizer = spec.optimizer
    if name == "opt":
        rule = OPTIMIZERS.get(optimizer or "zo_sgd")
        if rule.flags.get("search"):
            raise ValueError(
                f"--attack opt needs a gradient rule for --optimizer; {rule.name} is a search "
                "rule (see `zoattack list optimizers`)"
            )
        optimizer = rule.name
    subspace = spec.subspace or "full"
    if "subspace" not in takes and subspace != "full":
        raise ValueError(f"--attack {name} searches the full image; drop --subspace")
    resolved = dataclasses.replace(
        spec, attack=name, norm=norm, eps=eps, optimizer=optimizer, subspace=subspace
    )
    make_attack(resolved)
    return resolved


def attack_options(spec: AttackSpec) -> dict[str, Any]:
    """Keyword arguments of the spec's decision attack (only the options given)."""
    takes = ATTACK_OPTIONS.get(str(spec.attack), {})
    return {opt: getattr(spec, f) for f, opt in takes.items() if getattr(spec, f) is not None}


def make_attack(spec: AttackSpec) -> DecisionAttack:
    return create_decision_attack(str(spec.attack), **attack_options(spec))


def effective_options(spec: AttackSpec) -> dict[str, Any]:
    """The options the attack really runs with (its defaults filled in), for run.json."""
    attack = make_attack(spec)
    out: dict[str, Any] = {}
    for k, v in vars(attack).items():
        if k.startswith("_"):
            continue
        out[k] = v if isinstance(v, str | int | float | bool | type(None)) else dict(v)
    return out


def decision_method(spec: AttackSpec) -> str:
    """What ran, in words (e.g. ``"hsja (hard-label, labels only; subspace full)"``)."""
    opts = effective_options(spec)
    parts = ["hard-label, labels only"]
    if spec.labels_only:
        parts.append("scores hidden by --labels-only")
    if spec.attack == "opt":
        kw = opts.get("rule_kwargs") or {}
        parts.append(
            f"rule {spec.optimizer}, " + ", ".join(f"{k} {v}" for k, v in sorted(kw.items()))
        )
    for key in ("subspace", "k", "tol"):
        if key in opts:
            parts.append(f"{'directions' if key == 'k' else key} {opts[key]}")
    if spec.init_from:
        parts.append(f"starts from {spec.init_from}")
    elif spec.target is not None:
        parts.append("targeted starts: a random data-set image of the target class (checked)")
    return f"{spec.attack} ({'; '.join(parts)})"


def decision_label(spec: AttackSpec) -> str:
    """How tables name a decision attack: ``hsja``, or ``opt:lizo+lizo`` for OPT's rule."""
    if spec.attack != "opt":
        return str(spec.attack)
    kw = effective_options(spec).get("rule_kwargs") or {}
    factory = OPTIMIZERS.get(str(spec.optimizer)).factory
    est = kw.get("estimator") or getattr(factory, "default_estimator", None) or "default"
    return f"opt:{spec.optimizer}+{est}"


def check_model_for_decision(spec: AttackSpec, model: object) -> None:
    """A decision attack runs on a labels-only model, or on any model with --labels-only."""
    if spec.labels_only or getattr(model, "output_kind", None) == "labels":
        return
    raise ValueError(scores_model_message(spec))


def scores_model_message(spec: AttackSpec) -> str:
    return (
        f"--attack {spec.attack} is a hard-label attack but --model {spec.model} gives scores; "
        "pass --labels-only to attack it through its top-1 labels only, or pick a score-based "
        "attack: --attack square, --attack sign, or --attack zo --optimizer RULE"
    )


def load_starts(path: str | Path, shape: tuple[int, ...], images: int) -> Tensor:
    """Start images from ``path`` (.pt/.pth tensor, .npy array, .png image), shaped
    ``(images, C, H, W)`` or one ``(C, H, W)`` image for all (then repeated), in [0, 1].

    Raises ValueError with one clear line for a missing or unreadable file, a wrong shape,
    NaN/inf or values outside [0, 1]."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"--init-from {p}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and len(obj) == 1:
                obj = next(iter(obj.values()))
            if not isinstance(obj, Tensor):
                raise ValueError(f"it holds a {type(obj).__name__}, not a tensor")
            x = obj.detach().float()
        elif suffix == ".npy":
            x = torch.from_numpy(np.load(p, allow_pickle=False).astype(np.float32))
        elif suffix == ".png":
            from PIL import Image

            with Image.open(p) as img:
                mode = "L" if shape[0] == 1 else "RGB"
                arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
            x = torch.from_numpy(arr)
            x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        else:
            raise ValueError("use a .pt, .npy or .png file")
    except ValueError as exc:
        raise ValueError(f"--init-from {p}: {exc}") from None
    except Exception as exc:  # unreadable files of any kind: one line, not a traceback
        raise ValueError(f"--init-from {p}: cannot read it ({type(exc).__name__}: {exc})") from None
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0).expand(images, *shape).clone()
    if tuple(x.shape) != (images, *shape):
        want = "x".join(map(str, shape))
        raise ValueError(
            f"--init-from {p}: expected {images}x{want} start images (or one {want} image), "
            f"got shape {'x'.join(map(str, x.shape))}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"--init-from {p}: contains NaN or inf")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(
            f"--init-from {p}: values must lie in [0, 1] (got [{float(x.min()):.4g}, "
            f"{float(x.max()):.4g}]); pixels are in [0, 1]"
        )
    return x


def draw_targets(
    target: str | None, label: Tensor, classes: int, gen: torch.Generator
) -> Tensor | None:
    """Target classes ``(N,)``: None (untargeted), a class index, or ``random`` (uniform over
    the other classes, from the chunk's generator)."""
    if target is None:
        return None
    if target.isdigit():
        return torch.full_like(label, int(target))
    shift = torch.randint(1, classes, (len(label),), generator=gen, device=gen.device)
    return (label + shift.to(label.device)) % classes


def run_decision_chunk(
    job: PreparedJob, chunk: int, *, progress: Callable[[int], None] | None = None
) -> ChunkOutcome:
    """Attack one chunk with the spec's decision attack (deterministic given the settings
    and the chunk index). A failing model raises :class:`AttackInterrupted` (no partial rows:
    the chunk is redone on resume)."""
    from zoattack.jobs.attack import ChunkOutcome, chunk_inputs

    s = job.spec
    start, stop = job.chunks()[chunk]
    x, y, gen = chunk_inputs(job, chunk)
    blackbox = BlackBox(
        job.model,
        output="labels",
        budget=s.budget,
        max_batch=s.max_batch,
        input_shape=tuple(x.shape[1:]),
        # the wrapper hides the parameters the black box would take the device from
        device=job.model.device if isinstance(job.model, LabelsOnly) else None,
    )
    target = draw_targets(s.target, y, len(job.classes), gen)
    x_init = None
    if job.starts is not None:
        x_init = job.starts[start:stop].to(job.device)
    elif target is not None:
        assert job.pool is not None
        pool_x, pool_y = job.pool
        x_init = target_starts(pool_x.to(job.device), pool_y.to(job.device), target, gen)
    cb = None
    if progress is not None:

        def cb(step: int, queries: Tensor) -> None:
            progress(int(queries.sum()))

    assert s.eps is not None
    t0 = time.perf_counter()
    try:
        result = make_attack(s).run(
            blackbox,
            x,
            y,
            generator=gen,
            norm=s.norm,
            eps=s.eps,
            budget=s.budget,
            target=target,
            x_init=x_init,
            callback=cb,
        )
    except QueryBudgetExceeded:
        raise  # a bug, not a model failure: never dressed up as an interruption
    except (ZOAttackError, KeyboardInterrupt) as exc:
        # Decision attacks keep no partial state worth saving: the chunk is redone on resume.
        err = AttackInterrupted(str(exc) or type(exc).__name__, None)
        err.scored_inputs = blackbox.total_queries  # type: ignore[attr-defined]
        raise err from exc
    return ChunkOutcome(
        chunk=chunk,
        start=start,
        rows=rows_of(result, start),
        result=result,
        scored_inputs=blackbox.total_queries,
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "ATTACK_OPTIONS",
    "DECISION_COUNTING_RULE",
    "DECISION_HINT",
    "DEFAULT_ATTACK",
    "check_model_for_decision",
    "decision_label",
    "decision_method",
    "draw_targets",
    "load_starts",
    "make_attack",
    "resolve_decision",
    "run_decision_chunk",
]
