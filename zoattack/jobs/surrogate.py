"""Surrogate ensembles in jobs: `--surrogates` parsed, checked, loaded and run.

The ensemble itself (and the counting rule for its passes) is
:mod:`zoattack.attacks.surrogates`; the attacks built on it (``gfcs``, ``transfer``) are in
``zoattack/attacks``. Everything here happens before the first victim query: a surrogate
that cannot be loaded, takes other inputs or scores other classes is refused in one line.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoattack.errors import ZOAttackError

if TYPE_CHECKING:
    from zoattack.attacks.surrogates import SurrogateEnsemble
    from zoattack.jobs.attack import AttackSpec, ChunkOutcome, PreparedJob

# The score-rule options a surrogate attack does not take (its own: lr, loss, target).
_NOT_TAKEN = (
    "optimizer",
    "estimator",
    "samples",
    "mu",
    "difference",
    "momentum",
    "start",
    "restart",
    "mu_decay",
    "lr_decay",
    "init_from",
)
# Default step size of each attack as a fraction of eps, per norm (see each attack's
# docstring for where it comes from).
DEFAULT_LR = {
    "transfer": {"linf": 0.25, "l2": 0.25},
    "gfcs": {"linf": 0.25, "l2": 0.2},
}


def surrogate_list(spec: AttackSpec) -> list[tuple[str, str | None]]:
    """``[(name, weights or None)]`` of ``--surrogates`` / ``--surrogate-weights``."""
    if spec.surrogates is None:
        return []
    names = [n.strip() for n in str(spec.surrogates).split(",")]
    if not names or any(not n for n in names):
        raise ValueError(
            f"--surrogates takes model names separated by commas, got {spec.surrogates!r}"
        )
    if spec.surrogate_weights is None:
        return [(n, None) for n in names]
    weights = [w.strip() or None for w in str(spec.surrogate_weights).split(",")]
    if len(weights) != len(names):
        raise ValueError(
            f"--surrogate-weights gives {len(weights)} files for {len(names)} --surrogates; "
            "give one per surrogate, in order (an empty entry: its shipped weights)"
        )
    return list(zip(names, weights, strict=True))


def white_box(spec: AttackSpec) -> list[str]:
    """The surrogates that are the victim itself: same model name and same weights file."""
    return [
        n
        for n, w in surrogate_list(spec)
        if n == spec.model and (w or None) == (spec.weights or None)
    ]


def check_surrogate_spec(spec: AttackSpec) -> None:
    """Option-level checks (no model loaded): well-formed lists, not with --prior, remote
    models refused (a surrogate's gradient is taken locally), attacks that need one."""
    from zoattack.jobs.resolve import surrogate_attack_names

    name = (spec.attack or "").strip().lower().replace("-", "_")
    if spec.surrogates is None:
        if spec.surrogate_weights is not None:
            raise ValueError(
                "--surrogate-weights gives the --surrogates' weights; pass --surrogates"
            )
        if name in surrogate_attack_names():
            raise ValueError(
                f"--attack {name} attacks with surrogate models: pass --surrogates M1,M2 "
                "(local models on the victim's data set, e.g. resnet20)"
            )
        return
    pairs = surrogate_list(spec)
    if spec.prior is not None:
        raise ValueError(
            "--prior and --surrogates both name surrogates: put every model in --surrogates "
            "(the prior estimator then uses the ensemble)"
        )
    for n, _ in pairs:
        if n.startswith("remote:"):
            raise ValueError(
                f"--surrogates {n}: a surrogate must be a local model (its gradient is taken "
                "white-box); pass a zoo name or a local file-backed model"
            )
    if spec.attack is not None and name not in surrogate_attack_names():
        from zoattack.jobs.resolve import search_rules

        if name not in search_rules() and name != "zo":
            raise ValueError(
                f"--surrogates is not used by the hard-label --attack {name} yet; drop "
                "--surrogates, or run --attack gfcs or --attack transfer"
            )


def resolve_surrogate_attack(spec: AttackSpec) -> AttackSpec:
    """A gfcs/transfer spec (norm and eps already resolved) with its lr filled in."""
    from zoattack.norms import check_norm

    name = str(spec.attack).strip().lower().replace("-", "_")
    assert spec.eps is not None
    norm = check_norm(spec.norm, spec.eps)
    for key in _NOT_TAKEN:
        if getattr(spec, key) is not None:
            raise ValueError(
                f"--attack {name} takes --lr (its step size), --loss and --target; drop "
                f"--{key.replace('_', '-')}"
            )
    if spec.labels_only:
        raise ValueError(f"--attack {name} reads the victim's scores; drop --labels-only")
    if spec.subspace not in (None, "full"):
        raise ValueError(f"--attack {name} searches the full image; drop --subspace")
    lr = spec.lr if spec.lr is not None else DEFAULT_LR[name][norm] * spec.eps
    if not lr > 0:
        raise ValueError(f"--lr (the {name} step size) must be > 0, got {lr:g}")
    return dataclasses.replace(spec, attack=name, norm=norm, lr=float(lr), subspace="full")


def surrogate_words(spec: AttackSpec, use: str = "the mean of their loss gradients") -> str:
    """The ensemble in words for the method line (white-box labelled as such)."""
    pairs = surrogate_list(spec)
    shown = ", ".join(f"{n} (weights {w})" if w else n for n, w in pairs)
    words = f"surrogates {shown} (local models: {use}; their passes cost no victim queries)"
    same = white_box(spec)
    if same:
        words += (
            f"; WHITE-BOX SETTING: surrogate {', '.join(same)} is the victim itself (same "
            "name and weights)"
        )
    return words


def surrogate_attack_method(spec: AttackSpec) -> str:
    from zoattack.attacks.surrogates import SURROGATE_ATTACKS

    entry = SURROGATE_ATTACKS.get(str(spec.attack))
    describe: Callable[..., str] = entry.flags["method"]
    use = entry.flags.get("uses", "the mean of their loss gradients")
    return f"{entry.name} ({describe(spec.norm, spec.lr, spec.eps)}; {surrogate_words(spec, use)})"


def build_ensemble(spec: AttackSpec, data: Any, device: torch.device) -> SurrogateEnsemble:
    """Load every surrogate and check it takes the data set's images and scores its
    classes: one line (a ValueError) for the first that does not, before any victim query."""
    from zoattack.attacks.surrogates import SurrogateEnsemble, check_surrogate
    from zoattack.models import create_model

    members: list[nn.Module] = []
    names: list[str] = []
    shape = tuple(data.images.shape[1:])
    for n, w in surrogate_list(spec):
        what = f"surrogate {n}" + (f" (weights {w})" if w else "")
        try:
            m = create_model(
                n,
                dataset=data,
                weights=w,
                model_dir=spec.model_dir,
                pretrained=w is None and ":" not in n,
                device=device,
            )
        except (ZOAttackError, ValueError, OSError, RuntimeError, KeyError) as exc:
            text = str(exc.args[0]) if exc.args else type(exc).__name__
            raise ValueError(f"{what} cannot be loaded: {text}") from None
        m.eval().requires_grad_(False)  # ours: only input gradients are ever taken
        check_surrogate(m, what, shape, len(data.classes), device)
        members.append(m)
        names.append(n)
    return SurrogateEnsemble(members, names, white_box=bool(white_box(spec)))


def ensemble_of(
    surrogates: Any,
    *,
    dataset: Any,
    device: torch.device,
    shape: tuple[int, ...],
    classes: int | None,
    names: list[str] | None = None,
) -> tuple[SurrogateEnsemble, str]:
    """`zoattack.attack`'s ``surrogates=[...]`` (names or modules) as an ensemble, and the
    string its spec records."""
    from zoattack.attacks.surrogates import SurrogateEnsemble, check_surrogate
    from zoattack.errors import InvalidInputError
    from zoattack.models import create_model

    if isinstance(surrogates, nn.Module | str):
        surrogates = [surrogates]
    members: list[nn.Module] = []
    given = names
    names = []
    for i, s in enumerate(list(surrogates)):
        if isinstance(s, nn.Module):
            m, name = s, given[i] if given else f"python:{type(s).__name__}"
        elif isinstance(s, str):
            if dataset is None:
                raise InvalidInputError(
                    f"surrogate {s!r} is a model name: pass dataset= (which data set it is "
                    "built for), or pass the model itself"
                )
            try:
                m = create_model(s, dataset=dataset, pretrained=":" not in s, device=device)
            except (ZOAttackError, ValueError, OSError, RuntimeError, KeyError) as exc:
                text = str(exc.args[0]) if exc.args else type(exc).__name__
                raise InvalidInputError(f"surrogate {s} cannot be loaded: {text}") from None
            name = s
        else:
            raise InvalidInputError(
                f"surrogates= takes model names or nn.Modules, got {type(s).__name__}"
            )
        m = m.to(device).eval()
        if classes is None:  # no class count given: the surrogates must agree with the first
            with torch.no_grad():
                classes = int(m(torch.zeros(1, *shape, device=device)).shape[-1])
        check_surrogate(m, name, shape, classes, device)
        members.append(m)
        names.append(name)
    if not members:
        raise InvalidInputError("surrogates= is empty: give at least one model")
    return SurrogateEnsemble(members, names), ",".join(names)


def run_surrogate_chunk(
    job: PreparedJob, chunk: int, *, progress: Callable[[int], None] | None = None
) -> ChunkOutcome:
    """One chunk of a gfcs/transfer job (deterministic given the settings and the chunk)."""
    from zoattack.attacks.base import AttackInterrupted
    from zoattack.attacks.surrogates import SURROGATE_ATTACKS
    from zoattack.blackbox import BlackBox
    from zoattack.errors import QueryBudgetExceeded
    from zoattack.jobs.attack import ChunkOutcome, chunk_inputs, counts_since
    from zoattack.results.rows import rows_of

    s = job.spec
    assert s.eps is not None and s.lr is not None and job.surrogate is not None
    start, _ = job.chunks()[chunk]
    x, y, gen = chunk_inputs(job, chunk)
    blackbox = BlackBox(
        job.model,
        output="logits",
        budget=s.budget,
        max_batch=s.max_batch,
        input_shape=tuple(x.shape[1:]),
    )
    before = job.surrogate_counts()
    t0 = time.perf_counter()
    fn = SURROGATE_ATTACKS.get(str(s.attack)).factory
    try:
        result = fn(
            blackbox,
            x,
            y,
            job.surrogate,
            generator=gen,
            norm=s.norm,
            eps=s.eps,
            budget=s.budget,
            lr=s.lr,
            loss=s.loss,
            target=s.target,
            progress=progress,
        )
    except QueryBudgetExceeded:
        raise
    except (ZOAttackError, KeyboardInterrupt) as exc:
        interrupted = AttackInterrupted(str(exc) or type(exc).__name__, None)
        interrupted.scored_inputs = blackbox.total_queries  # type: ignore[attr-defined]
        raise interrupted from exc
    return ChunkOutcome(
        chunk=chunk,
        start=start,
        rows=rows_of(result, start),
        result=result,
        scored_inputs=blackbox.total_queries,
        seconds=time.perf_counter() - t0,
        surrogate=counts_since(job, before),
    )
