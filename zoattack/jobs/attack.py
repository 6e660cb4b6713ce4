"""One attack job: the settings of `zoattack run`, resolved, prepared and executed in chunks.

The CLI (`zoattack run`), plan batches (`zoattack batch`) and remote executors all run attacks
through here, so defaults, validation, seeding and the per-image rows are the same everywhere.

Resumability: a job's images are split into fixed chunks (``chunk_size`` images, attacked as one
batch). Each chunk gets its own generator derived from ``(seed, chunk index)``, its own rule and
its own ledger, so a chunk's results depend only on the settings and its images. A run that
stopped part-way re-attacks only chunks with unfinished images and keeps only the rows it did not
have: the final rows equal those of an uninterrupted run, nothing lost and nothing duplicated.
Chunks are also the unit a distributed executor ships to a worker.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoattack.attacks.base import AttackInterrupted, AttackResult, run_attack
from zoattack.attacks.hardlabel.oracle import DecisionResult
from zoattack.blackbox import DECISION_HINT, BlackBox, LabelsOnly, check_output_kind
from zoattack.errors import ZOAttackError
from zoattack.jobs.defaults import DEFAULT_CHUNK
from zoattack.norms import DEFAULT_EPS, check_norm, parse_eps
from zoattack.optim import OPTIMIZERS, create_optimizer
from zoattack.optim.base import ZORule
from zoattack.registry import Tuned

# The row schema lives in the results layer; re-exported for callers of this module.
from zoattack.results.rows import (  # noqa: F401
    CSV_FIELDS,
    DECISION_COUNTING_RULE,
    ROW_COUNTING_RULE,
    rows_of,
    summarize_rows,
)

# Seconds between two live progress counts of a chunk (run_chunk's ``on_live``).
LIVE_EVERY = 0.2
# A gradient rule with no tuned lr for a norm steps eps/2 (tuned values: each rule's registry
# entry, ``norm_defaults``; how they were measured: docs/TUNING.md).
UNTUNED_LR = 0.5


class JobInterrupted(ZOAttackError):
    """The model stopped answering (or the user interrupted) part-way through a job.

    Every image finished before that has been handed to ``on_rows``; ``rows`` lists them.
    """

    def __init__(self, message: str, rows: list[dict[str, Any]], scored_inputs: int = 0) -> None:
        super().__init__(message)
        self.rows = rows
        self.scored_inputs = scored_inputs  # by this call of run_job, the cut-short chunk too


def resolve_eps(eps: float | str | None, dataset: str | None, norm: str) -> float:
    """The radius an attack runs at: ``eps`` as given (a number or a fraction like ``8/255``),
    else the data set's conventional radius for ``norm`` (the data-set registry's
    :func:`~zoattack.data.registry.conventional_eps`; CIFAR-10 Linf 8/255, ...). The one
    place eps defaults are resolved (score-based, hard-label and white-box runs)."""
    if eps is not None:
        return parse_eps(eps)
    from zoattack.data.registry import conventional_eps

    return conventional_eps(dataset, norm)[0]


def eps_source(eps: float, dataset: str | None, norm: str) -> str:
    """Where a resolved radius came from: the data set's convention when it equals it (e.g.
    ``"cifar10 convention"``), else ``"--eps"``."""
    from zoattack.data.registry import conventional_eps

    conv, origin = conventional_eps(dataset, norm)
    return origin if math.isclose(eps, conv, rel_tol=1e-9) else "--eps"


def default_optimizer(norm: str) -> str:
    """The rule a bare `zoattack run` uses under ``norm`` (its registry entry says ``default``)."""
    return OPTIMIZERS.default_for(norm).name


def tuned_mu(rule: str, norm: str, eps: float) -> float | None:
    """The tuned finite-difference radius for ``rule`` under ``norm`` (None: the estimator's)."""
    mu = OPTIMIZERS.get(rule).tuned(norm).mu
    return None if mu is None else mu * eps


def default_lr(rule: str, norm: str, eps: float, estimator: str | None = None) -> float:
    """The tuned fraction of eps from the rule's registry entry; untuned: search rules (flag
    ``search``: sign, square) take their radius eps, gradient rules eps/2. With ``estimator``
    (the one that runs): the lr tuned for that pairing where the rule was tuned with another
    estimator (:func:`lr_origin` says which)."""
    return lr_origin(rule, norm, eps, estimator)[0]


def canonical_estimator(name: str | None) -> str | None:
    """The registry name of an estimator (aliases and spellings resolved); None stays None."""
    if name is None:
        return None
    from zoattack.estimators import ESTIMATORS

    try:
        return ESTIMATORS.get(name).name
    except ZOAttackError:  # an unknown name is reported where the rule is built
        return name


def lr_origin(rule: str, norm: str, eps: float, estimator: str | None = None) -> tuple[float, str]:
    """The lr ``rule`` runs with under ``norm`` when no --lr is given, and where it comes from.

    A learning rate is tuned for one estimator's scale: LIZO's estimate is about n/d of the
    gradient, the unbiased ones (sphere, gaussian, dap, prior) the whole of it, so lizo's lr
    steps about d/n times too far with the prior or DAP (48% vs 80% at L2, small_cnn). Order:
    the rule's own tuned lr when ``estimator`` is the one it was tuned with (or None); else
    the lr tuned for the (rule, estimator, norm) pairing in the registry
    (``pairing_defaults``, measured on held-out images, docs/TUNING.md); else the rule's own
    lr, labelled as tuned for another estimator.
    """
    entry = OPTIMIZERS.get(rule)
    tuned = entry.tuned(norm)
    if entry.flags.get("search"):
        if tuned.lr is None:
            return 1.0 * eps, "untuned: the radius eps"
        return float(tuned.lr) * eps, f"tuned for {entry.name} under {norm}"
    own = tuned.estimator or getattr(entry.factory, "default_estimator", None)
    est = canonical_estimator(estimator)
    if tuned.lr is None:
        return UNTUNED_LR * eps, f"untuned: eps/{1 / UNTUNED_LR:g}"
    if est is None or own is None or est == own:
        return float(tuned.lr) * eps, f"tuned for {entry.name}+{own or est} under {norm}"
    paired = entry.tuned_pairing(est, norm)
    if paired is not None and paired.lr is not None:
        return (
            float(paired.lr) * eps,
            f"tuned for the {entry.name}+{est} pairing under {norm} on held-out images",
        )
    return (
        float(tuned.lr) * eps,
        f"{entry.name}'s lr tuned with {own}, not re-tuned for {est}",
    )


@dataclass(frozen=True)
class AttackSpec:
    """Every setting of one attack, named as `zoattack run`'s options (``-`` → ``_``).

    ``None`` means "the default for this rule and norm"; :meth:`resolved` fills them in.
    """

    model: str = "small_cnn"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    weights: str | None = None
    model_dir: str | None = None
    threat_model: str | None = None
    images: int = 100
    norm: str = "linf"
    eps: float | None = None  # None: the data set's conventional radius (resolve_eps)
    target: str | None = None
    loss: str = "margin"
    budget: int = 1000
    optimizer: str | None = None
    estimator: str | None = None
    samples: int | None = None
    lr: float | None = None
    mu: float | None = None
    difference: str | None = None
    momentum: float | None = None
    subspace: str | None = None
    # Generic tricks of the gradient rules (ZORule): first iterate (zero, stripes, vertex),
    # restart patience in steps (0 off), smoothing-radius decay mu -> mu*r, lr schedule.
    start: str | None = None
    restart: int | None = None
    mu_decay: float | None = None
    lr_decay: str | None = None
    seed: int = 0
    device: str = "auto"
    max_batch: int = 4096
    chunk_size: int = DEFAULT_CHUNK
    # -- hard-label (decision-based) attacks: zoattack/jobs/hardlabel.py ---------------------
    # attack: a decision attack (sign_opt, hsja, rays, opt) instead of a score-based rule;
    # labels_only: show the model to it through its top-1 label only; init_from: start images.
    attack: str | None = None
    labels_only: bool = False
    init_from: str | None = None
    # Transfer prior (P-RGF): a local white-box surrogate model and its weights.
    prior: str | None = None
    prior_weights: str | None = None
    # An untrained victim on purpose (--random-init); by default models load pretrained weights.
    random_init: bool = False
    # Data-set indices to attack ("0:100,250,300:400"), instead of the first --images.
    indices: str | None = None
    # Surrogate ensemble (zoattack/attacks/surrogates.py): model names, comma-separated, and
    # their weights files in the same order (an empty entry: that model's shipped weights).
    surrogates: str | None = None
    surrogate_weights: str | None = None

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return {f.name: f.type for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AttackSpec:
        """Build from option names (``-`` or ``_``); unknown names are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {k.replace("-", "_"): v for k, v in values.items()}
        bad = sorted(k for k in clean if k not in known)
        if bad:
            import difflib

            hints = [
                f"{k} (did you mean {m[0]}?)"
                if (m := difflib.get_close_matches(k, known, n=1))
                else k
                for k in bad
            ]
            raise ValueError(
                f"unknown attack setting {', '.join(hints)}; settings are the "
                "options of `zoattack run`"
            )
        return cls(**clean)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def image_indices(self) -> list[int]:
        """The data-set indices this job attacks: ``--indices``, else the first ``images``."""
        if self.indices is None:
            return list(range(self.images))
        from zoattack.data.registry import parse_indices

        return parse_indices(self.indices)

    def resolved(self) -> AttackSpec:
        """Validate every field and fill the defaults (eps, rule, subspace, estimator, lr).

        The one resolver of `zoattack run`, plan batches and :func:`zoattack.attack`: a
        score-based ``attack`` name is folded into ``optimizer`` first, and eps defaults come
        from :func:`resolve_eps` (the norm and the data set's convention)."""
        from zoattack.jobs.resolve import fold_attack

        if self.indices is not None:  # --indices replaces --images
            count = len(self.image_indices())
            if count != self.images:
                return dataclasses.replace(self, images=count).resolved()
        self = fold_attack(self)
        norm = self.norm.lower()
        eps = resolve_eps(self.eps, self.dataset, norm)
        norm = check_norm(norm, eps)
        self._check_common()
        if self.random_init:
            from zoattack.models import check_random_init

            check_random_init(self.model, self.weights)
        from zoattack.jobs.surrogate import check_surrogate_spec

        check_surrogate_spec(self)
        if self.attack is not None and _is_surrogate_attack(self.attack):
            from zoattack.jobs.surrogate import resolve_surrogate_attack

            return resolve_surrogate_attack(dataclasses.replace(self, norm=norm, eps=eps))
        if self.attack is not None:
            from zoattack.jobs.hardlabel import resolve_decision

            return resolve_decision(self)
        if self.labels_only:
            raise ValueError(
                "--labels-only hides the scores, which score-based attacks need: add "
                f"{DECISION_HINT}"
            )
        if self.init_from is not None:
            raise ValueError(
                f"--init-from gives the start images of a hard-label attack: add {DECISION_HINT}"
            )
        entry = OPTIMIZERS.get(self.optimizer or default_optimizer(norm))
        rule = entry.name
        search = bool(entry.flags.get("search"))
        # Search rules tune only their radius (lr); they estimate nothing and search the image.
        tuned = Tuned() if search else entry.tuned(norm)
        subspace = self.subspace or tuned.subspace or "full"
        _check_prior(self, rule, search)
        estimator = self.estimator or (
            "prior" if self.prior or (self.surrogates and not search) else tuned.estimator
        )
        momentum, mu, difference = self.momentum, self.mu, self.difference
        tricks = {k: getattr(self, k) for k in TRICKS}
        if estimator == tuned.estimator:  # tuned together with that estimator only
            momentum = tuned.momentum if momentum is None else momentum
            mu = tuned_mu(rule, norm, eps) if mu is None else mu
            difference = tuned.difference if difference is None else difference
            tricks = {k: getattr(tuned, k) if v is None else v for k, v in tricks.items()}
        elif (paired := entry.tuned_pairing(str(canonical_estimator(estimator)), norm)) is not None:
            # Tuned for this rule with this estimator (held-out images); lr: lr_origin.
            momentum = paired.momentum if momentum is None else momentum
            mu = (None if paired.mu is None else paired.mu * eps) if mu is None else mu
            difference = paired.difference if difference is None else difference
        if estimator in ("prior", "p_rgf", "prgf"):
            # The rule's own tricks (its tuned momentum) carry over. The prior probes unit
            # directions, as `sphere` does, so it takes the radius and difference tuned for
            # `sphere` under this norm (the rule's own when it runs sphere): the radius tuned
            # at Linf (eps/2, central) is 500x the one tuned at L2 (1e-3, forward), and a
            # forward difference at eps/2 inflates the norm estimate ~10x (held-out images).
            ref = tuned if tuned.estimator == "sphere" else OPTIMIZERS.get(PRIOR_REF).tuned(norm)
            if ref.estimator == "sphere":
                mu = (None if ref.mu is None else ref.mu * eps) if mu is None else mu
                difference = ref.difference if difference is None else difference
            else:  # no sphere tuning to borrow: the earlier convention
                mu = PRIOR_MU * eps if mu is None else mu
            momentum = tuned.momentum if momentum is None else momentum
        if rule == "lizo" and estimator in (None, "lizo") and _stochastic_model(self.model):
            raise ValueError(
                "lizo reuses earlier queries, which is only sound on a deterministic objective; "
                f"--model {self.model} draws fresh noise on every query (smooth=): pass "
                "--estimator gaussian (no reuse) or pick another --optimizer"
            )
        if search:
            _check_search_options(
                rule,
                entry.flags.get("norms", ()),
                norm,
                eps,
                subspace,
                lr=self.lr,
                estimator=self.estimator,
                samples=self.samples,
                mu=self.mu,
            )
            for key in TRICKS:
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"the {rule} rule is a search rule; --{key.replace('_', '-')} belongs "
                        "to the gradient rules (zo_sgd, zo_signsgd, zo_adamm, radazo, lizo)"
                    )
        lr = self.lr if self.lr is not None else default_lr(rule, norm, eps, estimator)
        spec = dataclasses.replace(
            self,
            norm=norm,
            eps=eps,
            optimizer=rule,
            subspace=subspace,
            estimator=estimator,
            momentum=momentum,
            mu=mu,
            difference=difference,
            lr=float(lr),
            **tricks,
        )
        spec.make_rule()  # invalid hyperparameters fail here, before any model is built
        return spec

    def _check_common(self) -> None:
        """Checks every attack (score-based or hard-label) shares."""
        if not isinstance(self.model, str):
            raise ValueError(
                f"AttackSpec.model names a model (e.g. small_cnn), got a "
                f"{type(self.model).__name__}; to attack a model object call "
                "zoattack.attack(model, images, labels)"
            )
        if self.images < 1:
            raise ValueError(f"--images must be >= 1, got {self.images}")
        if self.budget < 2:
            raise ValueError(f"--budget must be >= 2 queries per image, got {self.budget}")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.loss not in ("margin", "ce"):
            raise ValueError(f"--loss must be margin or ce, got {self.loss!r}")

    def make_rule(self) -> ZORule:
        """A fresh rule (no memory) for these resolved settings."""
        assert self.optimizer is not None and self.lr is not None and self.eps is not None
        if OPTIMIZERS.get(self.optimizer).flags.get("search"):
            # Estimator-free: the radius, the norm and the budget drive their schedules.
            return create_optimizer(self.optimizer, lr=self.lr, norm=self.norm, budget=self.budget)
        return create_optimizer(
            self.optimizer,
            lr=self.lr,
            estimator=self.estimator,
            num_samples=self.samples,
            mu=self.mu,
            difference=self.difference,
            momentum=self.momentum,
            **{k: getattr(self, k) for k in TRICKS},
        )


# The AttackSpec fields that are the gradient rules' generic tricks (ZORule options of the
# same names); None: the rule's tuned value, else off.
TRICKS = ("start", "restart", "mu_decay", "lr_decay")


# The prior estimator's probe radius as a fraction of eps: the radius tuned for the sphere
# estimator of zo_adamm, radazo and zo_signsgd (same convention: unit directions, mu = radius).
PRIOR_MU = 0.5
# The rule whose sphere tuning (radius, difference) the prior borrows when the rule itself
# was tuned with another estimator.
PRIOR_REF = "zo_adamm"


def _check_prior(spec: AttackSpec, rule: str, search: bool) -> None:
    """--prior needs a gradient rule and a model whose gradient can be taken locally;
    --estimator prior needs --prior."""
    est = (spec.estimator or "").lower().replace("-", "_")
    if spec.surrogates is not None:
        if search:
            raise ValueError(
                f"the {rule} rule uses no surrogate; with --surrogates run --attack gfcs, "
                "--attack transfer or a gradient rule (P-RGF: --attack zo --estimator prior)"
            )
        return
    if spec.prior is None:
        if spec.prior_weights is not None:
            raise ValueError(
                "--prior-weights gives the --prior model's weights; pass --prior MODEL"
            )
        if est in ("prior", "p_rgf", "prgf"):
            raise ValueError(
                "--estimator prior biases directions toward a surrogate's gradient: pass "
                "--prior MODEL (a local model, e.g. small_cnn or resnet20)"
            )
        return
    if search:
        raise ValueError(
            f"the {rule} rule uses no gradient estimator, so it cannot use --prior; pick a "
            "gradient rule (--optimizer zo_adamm, radazo, lizo, zo_signsgd or zo_sgd)"
        )
    if spec.prior.startswith("remote:"):
        raise ValueError(
            f"--prior {spec.prior}: a surrogate must be a local model (its gradient is taken "
            "white-box); pass a zoo name or a local file-backed model"
        )


def _stochastic_model(model: str) -> bool:
    """Whether ``model`` names a randomized victim (a smoothed defense scores every input on
    fresh noise), on which reused function values are stale. Remote models are not known."""
    return model.startswith("defended:") and any(
        opt.strip().startswith("smooth=") for opt in model.split(",")[1:]
    )


def _check_search_options(
    rule: str,
    norms: tuple[str, ...],
    norm: str,
    eps: float,
    subspace: str,
    *,
    lr: float | None,
    estimator: str | None,
    samples: int | None,
    mu: float | None,
) -> None:
    """Search rules (sign, square) estimate no gradient, search the full image, and take
    ``lr`` as their radius (default eps; a larger one would only be projected back)."""
    for option, value in (("--estimator", estimator), ("--samples", samples), ("--mu", mu)):
        if value is not None:
            raise ValueError(f"the {rule} rule uses no gradient estimator; drop {option}")
    if norms and norm not in norms:
        raise ValueError(f"the {rule} rule supports --norm {' or '.join(norms)}, got {norm}")
    if subspace != "full":
        raise ValueError(
            f"the {rule} rule searches the full image; --subspace must be full, got {subspace!r}"
        )
    if lr is not None and lr > eps:
        raise ValueError(
            f"--lr is the {rule} rule's search radius and must be <= eps ({eps:g}), got {lr:g}"
        )


def chunk_bounds(images: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of the job's chunks."""
    return [(s, min(s + chunk_size, images)) for s in range(0, images, chunk_size)]


def chunk_seed(seed: int, chunk: int) -> int:
    """A well-mixed 63-bit seed for one chunk (independent streams for (seed, chunk) pairs)."""
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


@dataclass
class PreparedJob:
    """A resolved spec with its data and model loaded (what every chunk needs)."""

    spec: AttackSpec
    images: Tensor
    labels: Tensor
    classes: list[str]
    model: torch.nn.Module
    device: torch.device
    data_source: str = ""
    # hard-label jobs: --init-from starts (all images), or the data-set pool that targeted
    # starts are drawn from (images, labels)
    starts: Tensor | None = None
    pool: tuple[Tensor, Tensor] | None = None
    surrogate: torch.nn.Module | None = None  # the --prior model (white-box, local)
    # data-set index of each image (--indices); None: image i is data-set index i
    index_map: list[int] | None = None

    def dataset_index(self, position: int) -> int:
        """The data-set index of the image at ``position`` (what rows record)."""
        return position if self.index_map is None else self.index_map[position]

    def with_dataset_indices(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` (indexed by position in this job) re-indexed by data-set index."""
        if self.index_map is None:
            return rows
        return [{**r, "index": self.index_map[int(r["index"])]} for r in rows]

    @property
    def label(self) -> str:
        return spec_label(self.spec)

    def settings(self) -> dict[str, Any]:
        """Every setting (resolved), the seed, versions and the counting rule."""
        from zoattack._version import __version__

        assert self.spec.eps is not None
        return {
            **effective_settings(self.spec),
            "eps_source": eps_source(float(self.spec.eps), self.spec.dataset, self.spec.norm),
            "method": method_of(self.spec)
            + (
                f"; victim {self.spec.model} randomly initialised, untrained (--random-init)"
                if self.spec.random_init
                else ""
            ),
            **(
                {"lr_source": lr_source(self.spec)}
                if self.spec.attack is None and self.spec.lr is not None
                else {}
            ),
            "images": len(self.labels),
            "device": str(self.device),
            "zoattack": __version__,
            "torch": torch.__version__,
            "data_source": self.data_source,
            "counting_rule": self.counting_rule(),
        }

    def chunks(self) -> list[tuple[int, int]]:
        return chunk_bounds(len(self.labels), self.spec.chunk_size)

    def counting_rule(self) -> str:
        rule = ROW_COUNTING_RULE if is_score_based(self.spec) else DECISION_COUNTING_RULE
        if self.spec.surrogates is not None:
            from zoattack.attacks.surrogates import SURROGATE_COUNTING_RULE

            rule += "; " + SURROGATE_COUNTING_RULE
        return rule

    def surrogate_counts(self) -> dict[str, int]:
        """Surrogate passes so far (an ensemble's counters; empty without one)."""
        counts = getattr(self.surrogate, "counts", None)
        return dict(counts()) if callable(counts) and self.spec.surrogates else {}


def effective_settings(spec: AttackSpec) -> dict[str, Any]:
    """A resolved spec's settings with the values its rule really uses (the estimator's own
    defaults for samples, mu and difference filled in): two specs run the same attack exactly
    when these agree (device and max_batch aside). Needs no data or model."""
    if spec.attack is not None and _is_surrogate_attack(spec.attack):
        return spec.as_dict()
    if spec.attack is not None:
        from zoattack.jobs.hardlabel import effective_options

        return {**spec.as_dict(), "attack_options": effective_options(spec)}
    rule = spec.make_rule()
    est = rule.estimator
    base = spec.as_dict()
    # No transfer prior: the settings keep their earlier shape (older records compare equal).
    for key in ("prior", "prior_weights", "indices", "surrogates", "surrogate_weights", *TRICKS):
        if base[key] is None:
            del base[key]
    if not base["random_init"]:
        del base["random_init"]
    return {
        **base,
        "estimator": est.name if est is not None else None,
        "samples": est.num_samples if est is not None else None,
        "mu": est.mu if est is not None else None,
        "difference": est.difference if est is not None else None,
    }


def method_of(spec: AttackSpec) -> str:
    """What ran, in words: the rule, its estimator (and whether it is the rule's paper
    estimator), LIZO's reuse, and the tricks (subspace or schedule, lr, mu, momentum).

    E.g. ``"lizo (estimator lizo, the paper's; reuse on, bound 2 lr, cap 50%; subspace
    tile:7>full; lr 0.1; mu 0.01)"``. A swapped estimator is labelled as such, so a tuned
    variant never passes for the paper's method."""
    if spec.attack is not None and _is_surrogate_attack(spec.attack):
        from zoattack.jobs.surrogate import surrogate_attack_method

        return surrogate_attack_method(spec)
    if spec.attack is not None:
        from zoattack.jobs.hardlabel import decision_method

        return decision_method(spec)
    if _is_search(spec):
        return f"{spec.optimizer} (search rule, radius {spec.lr:g}, full image)"
    rule = spec.make_rule()
    est = rule.estimator
    assert est is not None
    paper = type(rule).default_estimator
    parts = [
        f"estimator {est.name}, the paper's"
        if est.name == paper
        else f"estimator {est.name} instead of the paper's {paper}"
    ]
    bound = getattr(est, "reuse_distance_bound", None)
    if bound is not None:
        parts.append(
            f"reuse on, bound {bound:g}, cap {getattr(est, 'max_reuse_rate', 0):.0%}"
            if bound > 0
            else "reuse off"
        )
    parts.append(f"{est.num_samples} samples, {est.difference} differences")
    parts.append(f"subspace {spec.subspace}")
    parts.append(f"lr {spec.lr:g} ({lr_source(spec)})")
    parts.append(f"mu {est.mu:g}")
    if spec.surrogates:
        from zoattack.jobs.surrogate import surrogate_words

        parts.append(
            f"transfer prior: {surrogate_words(spec)}"
            if est.name == "prior"
            else f"surrogates {spec.surrogates} loaded but unused by the {est.name} estimator"
        )
    if spec.prior:
        weights = f", weights {spec.prior_weights}" if spec.prior_weights else ""
        parts.append(
            f"transfer prior: surrogate {spec.prior}{weights} (white-box, local; its gradients "
            "cost no victim queries)"
            if est.name == "prior"
            else f"surrogate {spec.prior} loaded but unused by the {est.name} estimator"
        )
    momentum = getattr(rule, "momentum", None)
    betas = getattr(rule, "beta1", None)
    if momentum:
        parts.append(f"momentum {momentum:g}")
    elif betas is not None:
        parts.append(f"momentum {betas:g} (betas {betas:g}, {getattr(rule, 'beta2', 0):g})")
    parts.extend(trick_words(rule))
    return f"{spec.optimizer} ({'; '.join(parts)})"


def lr_source(spec: AttackSpec) -> str:
    """Where a resolved score-based spec's lr came from: the default it resolves to (see
    :func:`lr_origin`) when it equals that, else the user's --lr."""
    assert spec.optimizer is not None and spec.eps is not None and spec.lr is not None
    lr, origin = lr_origin(spec.optimizer, spec.norm, spec.eps, spec.estimator)
    return origin if math.isclose(spec.lr, lr, rel_tol=1e-12) else "set by --lr"


def trick_words(rule: ZORule) -> list[str]:
    """The generic tricks a gradient rule runs with, in words (none: an empty list)."""
    out = []
    if rule.start != "zero":
        out.append(f"start at a random {rule.start} vertex (scored as a query)")
    if rule.restart:
        out.append(
            f"restart from the best point with fresh state after {rule.restart} steps "
            "without improvement"
        )
    if rule.mu_decay != 1.0:
        out.append(f"mu decays geometrically to {rule.mu_decay:g} x over the budget")
    if rule.lr_decay == "halving":
        out.append("lr halves at APGD's checkpoints (0.22, 0.41, ... of the budget)")
    elif rule.lr_decay == "sqrt":
        out.append("lr / sqrt(t)")
    return out


def spec_label(spec: AttackSpec) -> str:
    """How tables name a resolved spec's attack: the rule, plus its estimator if it has one
    (a hard-label attack: its name, ``opt:RULE+ESTIMATOR`` for OPT)."""
    if spec.attack is not None and _is_surrogate_attack(spec.attack):
        return str(spec.attack)
    if spec.attack is not None:
        from zoattack.jobs.hardlabel import decision_label

        return decision_label(spec)
    if spec.estimator is None or _is_search(spec):
        return str(spec.optimizer)
    return f"{spec.optimizer}+{spec.estimator}"


def _is_surrogate_attack(name: str) -> bool:
    from zoattack.jobs.resolve import surrogate_attack_names

    return name.strip().lower().replace("-", "_") in surrogate_attack_names()


def is_score_based(spec: AttackSpec) -> bool:
    """Whether ``spec`` (resolved) runs on scores: a rule, or a surrogate attack."""
    return spec.attack is None or _is_surrogate_attack(spec.attack)


def _is_search(spec: AttackSpec) -> bool:
    if spec.attack is not None:
        return False
    return bool(OPTIMIZERS.get(spec.optimizer or "sign").flags.get("search"))


def prepare(
    spec: AttackSpec,
    *,
    model: torch.nn.Module | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> PreparedJob:
    """Resolve ``spec``, load its data and build its model (or use ``model``).

    ``model_options`` go to the model factory and never into the recorded settings: they
    change how a model is reached (a remote model's token, timeout, retries), not results."""
    from zoattack.data import load_dataset
    from zoattack.data.fetch import load_or_fetch
    from zoattack.data.registry import load_test_images
    from zoattack.device import resolve_device
    from zoattack.models import create_model, default_pretrained

    spec = spec.resolved()
    check_budget(spec.budget)
    dev = resolve_device(spec.device)
    # --download fetches a missing data set too (torchvision's classes and checks).
    download = bool((model_options or {}).get("download"))
    data = load_test_images(
        spec.dataset,
        data_dir=spec.data_dir,
        images=spec.images,
        indices=None if spec.indices is None else spec.image_indices(),
        load=functools.partial(load_or_fetch, load_dataset, download=download),
    )
    if len(data) < spec.images:
        raise ValueError(
            f"--images {spec.images:,} asks for more than the {len(data):,} test images of "
            f"{data.name} ({getattr(data, 'source', '') or 'its files'}); pass --images "
            f"{len(data)} or fewer"
        )
    assert spec.eps is not None
    check_eps_fits(spec.norm, spec.eps, tuple(data.images.shape[1:]))
    check_target(spec.target, len(data.classes))
    built = model is None  # a caller's own module (``model=``) is theirs: never probed
    if model is None:
        model = _build_victim(spec, data, dev, model_options)
    model.eval()
    surrogate = None
    if spec.prior is not None:
        surrogate = create_model(
            spec.prior,
            dataset=data,
            weights=spec.prior_weights,
            model_dir=spec.model_dir,
            pretrained=default_pretrained(spec.prior, spec.prior_weights),
            device=dev,
        )
        surrogate.eval().requires_grad_(False)
    _check_models_take(spec, data, model if built else None, surrogate)
    if spec.surrogates is not None:
        from zoattack.jobs.surrogate import build_ensemble

        surrogate = build_ensemble(spec, data, dev)
    starts: Tensor | None = None
    pool: tuple[Tensor, Tensor] | None = None
    if is_score_based(spec):
        # A labels-only model (a `serve --output labels` server) is refused here, before a run
        # folder is started: score attacks would read its one-hot answers as flat scores.
        check_output_kind(model, "logits")
    else:  # hard-label: the attack code gets the model's labels only
        from zoattack.jobs.hardlabel import POOL, check_model_for_decision, load_starts

        check_model_for_decision(spec, model)
        if spec.labels_only and getattr(model, "output_kind", None) != "labels":
            model = LabelsOnly(model).eval()
        shape = tuple(data.images.shape[1:])
        if spec.init_from is not None:
            starts = load_starts(spec.init_from, shape, len(data.labels))
        elif spec.target is not None:
            more = load_dataset(
                spec.dataset, split="test", data_dir=spec.data_dir, limit=max(POOL, spec.images)
            )
            pool = (more.images, more.labels)
    return PreparedJob(
        spec=spec,
        images=data.images,
        labels=data.labels,
        classes=list(data.classes),
        model=model,
        device=dev,
        data_source=str(getattr(data, "source", "")),
        starts=starts,
        pool=pool,
        surrogate=surrogate,
        index_map=None if spec.indices is None else spec.image_indices(),
    )


def _check_models_take(spec: AttackSpec, data: Any, model: Any, surrogate: Any) -> None:
    """Before a run folder is started: the victim we built (a local module only, never a
    remote one) and the surrogate take these images (one probe forward each, outside the
    ledgers; ``model`` None: not ours to probe)."""
    from zoattack.models.fit import check_takes_inputs

    shape = tuple(data.images.shape[1:])
    if model is not None:
        check_takes_inputs(
            model, shape, dataset=data.name, model_name=spec.model, weights=spec.weights
        )
    if surrogate is not None:
        check_takes_inputs(
            surrogate,
            shape,
            dataset=data.name,
            model_name=str(spec.prior),
            weights=spec.prior_weights,
            options=("--prior", "--prior-weights"),
        )


def _build_victim(
    spec: AttackSpec, data: Any, dev: torch.device, model_options: Mapping[str, Any] | None
) -> torch.nn.Module:
    """The model ``spec`` names: pretrained (zoo, torchvision:, timm:) unless --weights FILE;
    with --random-init an untrained network, initialised from the run's seed (torch's global
    RNG, used by torchvision/timm initialisers, is forked so the caller's is untouched)."""
    from zoattack.models import create_model, default_pretrained
    from zoattack.seeding import make_generator

    kwargs: dict[str, Any] = dict(
        dataset=data,
        weights=spec.weights,
        model_dir=spec.model_dir,
        pretrained=default_pretrained(spec.model, spec.weights, random_init=spec.random_init),
        device=dev,
        threat_model=spec.threat_model,
        **(model_options or {}),
    )
    if not spec.random_init:
        return create_model(spec.model, **kwargs)
    if ":" not in spec.model:
        return create_model(spec.model, generator=make_generator(spec.seed), **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return create_model(spec.model, **kwargs)


# Ledgers are int64 and "unlimited" is 2**62 there: a budget must stay below both.
MAX_BUDGET = 2**62 - 1


def check_budget(budget: int) -> None:
    """Refuse a per-image budget the int64 query ledger cannot hold (before anything runs)."""
    if budget > MAX_BUDGET:
        raise ValueError(
            f"--budget {budget} is beyond what a query ledger can count (at most {MAX_BUDGET:,} "
            "queries per image)"
        )


def check_target(target: str | None, classes: int) -> None:
    """The checks of ``resolve_target`` that need no scores, done before a run folder is
    started (the attack itself only meets the target after the clean check)."""
    if target is None or target in ("random", "least-likely", "least_likely"):
        return
    if target.isdigit():
        try:
            t = int(target)
        except ValueError:  # str.isdigit() accepts digits int() does not, e.g. "²"
            t = -1
        if not 0 <= t < classes:
            raise ValueError(f"--target class must be in [0, {classes - 1}], got {target}")
        return
    raise ValueError(f"--target must be random, least-likely or a class index, got {target!r}")


def check_eps_fits(norm: str, eps: float, input_shape: tuple[int, ...]) -> None:
    """Refuse an L2 radius larger than any distance inside the [0, 1] box of these inputs.

    No two images in [0, 1]^d are farther apart than sqrt(d) in L2, so a larger eps makes the
    threat model unconstrained; it is almost always a radius meant for [0, 255] pixels or
    for another input size. (Linf is bounded by ``check_norm``: eps < 1.)
    """
    if norm != "l2":
        return
    d = math.prod(input_shape)
    largest = math.sqrt(d)
    if eps > largest:
        shape = "x".join(map(str, input_shape))
        raise ValueError(
            f"--eps {eps:g} is larger than any L2 distance between two {shape} images in [0, 1] "
            f"(at most sqrt({d}) = {largest:.4g}); pixels are in [0, 1], so pick eps <= "
            f"{largest:.4g} (the default is {DEFAULT_EPS['l2']:g})"
        )


@dataclass
class ChunkOutcome:
    chunk: int
    start: int
    rows: list[dict[str, Any]]
    result: AttackResult | DecisionResult
    scored_inputs: int
    seconds: float
    # surrogate passes of this chunk (surrogate_forwards, surrogate_grads); empty without
    surrogate: dict[str, int] = field(default_factory=dict)


def chunk_inputs(job: PreparedJob, chunk: int) -> tuple[Tensor, Tensor, torch.Generator]:
    """Images and labels of ``chunk`` on the job's device, and the chunk's own generator
    (seeded from the spec's seed and the chunk index, so a resumed chunk redraws the same)."""
    from zoattack.seeding import make_generator

    start, stop = job.chunks()[chunk]
    x = job.images[start:stop].to(job.device)
    y = job.labels[start:stop].to(job.device)
    return x, y, make_generator(chunk_seed(job.spec.seed, chunk), job.device)


def run_chunk(
    job: PreparedJob,
    chunk: int,
    *,
    progress: Callable[[int], None] | None = None,
    on_live: Callable[[int, dict[str, int]], None] | None = None,
) -> ChunkOutcome:
    """Attack one chunk from scratch (deterministic given the settings and the chunk index).

    Raises :class:`AttackInterrupted` (with the images it finished) when the model fails.
    ``on_live(chunk, counts)``: the chunk's images ``finished``, ``fooled`` and
    ``attacked`` (finished and initially correct) so far (score-based attacks, every step).
    """
    if job.spec.attack is not None and _is_surrogate_attack(job.spec.attack):
        from zoattack.jobs.surrogate import run_surrogate_chunk

        return run_surrogate_chunk(job, chunk, progress=progress)
    if job.spec.attack is not None:
        from zoattack.jobs.hardlabel import run_decision_chunk

        return run_decision_chunk(job, chunk, progress=progress)
    s = job.spec
    start, stop = job.chunks()[chunk]
    x, y, gen = chunk_inputs(job, chunk)
    blackbox = BlackBox(
        job.model,
        output="logits",
        budget=s.budget,
        max_batch=s.max_batch,
        input_shape=tuple(x.shape[1:]),
    )
    cb = None
    if progress is not None or on_live is not None:
        shown = [0.0]

        def cb(step: int, live: Any, queries: Tensor) -> None:
            if progress is not None:
                progress(int(queries.sum()))
            # Counting finished images reads device tensors (a sync on a GPU): a few times
            # a second is all a display needs.
            now = time.monotonic()
            if on_live is not None and live is not None and now - shown[0] >= LIVE_EVERY:
                shown[0] = now
                on_live(
                    chunk,
                    {
                        "finished": int(live.finished.sum()),
                        "fooled": int(live.fooled.sum()),
                        "attacked": int((live.finished & live.attacked).sum()),
                    },
                )

    t0 = time.perf_counter()
    before = job.surrogate_counts()
    assert s.eps is not None and s.subspace is not None
    try:
        result = run_attack(
            blackbox,
            x,
            y,
            s.make_rule(),
            generator=gen,
            norm=s.norm,
            eps=s.eps,
            budget=s.budget,
            loss=s.loss,
            target=s.target,
            subspace=s.subspace,
            callback=cb,
            surrogate=job.surrogate,
        )
    except AttackInterrupted as exc:
        # The queries of a cut-short chunk were spent too: the run's ledger counts them.
        exc.scored_inputs = blackbox.total_queries  # type: ignore[attr-defined]
        raise
    return ChunkOutcome(
        chunk=chunk,
        start=start,
        rows=rows_of(result, start),
        result=result,
        scored_inputs=blackbox.total_queries,
        seconds=time.perf_counter() - t0,
        surrogate=counts_since(job, before),
    )


def counts_since(job: PreparedJob, before: dict[str, int]) -> dict[str, int]:
    """Surrogate passes since ``before`` (a :meth:`PreparedJob.surrogate_counts`)."""
    return {k: v - before.get(k, 0) for k, v in job.surrogate_counts().items()}


@dataclass
class JobOutcome:
    """What one call of :func:`run_job` did (rows are only the new ones)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[ChunkOutcome] = field(default_factory=list)
    scored_inputs: int = 0
    seconds: float = 0.0
    surrogate: dict[str, int] = field(default_factory=dict)


def run_job(
    job: PreparedJob,
    *,
    done: Collection[int] = (),
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    only_chunks: Collection[int] | None = None,
    on_part: Callable[[dict[str, Any]], None] | None = None,
    on_examples: Callable[[Any, Tensor, list[dict[str, Any]]], None] | None = None,
    on_live: Callable[[int, dict[str, int]], None] | None = None,
) -> JobOutcome:
    """Attack every chunk holding an image not in ``done`` (dataset indices already recorded).

    ``on_rows`` receives each chunk's new rows as soon as the chunk ends (write them
    durably there). ``on_part`` receives, just before, the work record of the chunk
    (``chunk``, ``scored_inputs``, ``seconds``, ``complete``), also for a chunk cut short, so
    a ledger kept from these records counts every query spent. ``progress`` receives the
    job's scored inputs so far. On a model failure, rows of images finished in the failing
    chunk are handed to ``on_rows`` and :class:`JobInterrupted` is raised.
    ``on_examples(result, keep, rows)`` receives, just before ``on_rows``, the chunk's result
    and the mask (over its images) of those whose ``rows`` follow: their adversarial examples
    reach disk before their rows do. ``on_live``: see :func:`run_chunk`.
    """
    done_set = {int(i) for i in done}
    outcome = JobOutcome()
    t0 = time.perf_counter()
    for k, (start, stop) in enumerate(job.chunks()):
        if only_chunks is not None and k not in only_chunks:
            continue
        if all(job.dataset_index(i) in done_set for i in range(start, stop)):
            continue
        base = outcome.scored_inputs

        def chunk_progress(q: int, base: int = base) -> None:
            if progress is not None:
                progress(base + q)

        t_chunk = time.perf_counter()
        try:
            res = run_chunk(job, k, progress=chunk_progress, on_live=on_live)
        except (AttackInterrupted, KeyboardInterrupt) as exc:
            spent = int(getattr(exc, "scored_inputs", 0))
            if on_part is not None:
                on_part(
                    {
                        "chunk": k,
                        "scored_inputs": spent,
                        "seconds": round(time.perf_counter() - t_chunk, 3),
                        "complete": False,
                    }
                )
            outcome.scored_inputs += spent
            rows: list[dict[str, Any]] = []
            partial = getattr(exc, "partial", None)
            if partial is not None:
                keep = partial.finished & _not_done(start, len(partial.finished), done_set)
                rows = job.with_dataset_indices(rows_of(partial.result, start, keep))
                if rows and on_examples is not None:
                    on_examples(partial.result, keep, rows)
            if rows and on_rows is not None:
                on_rows(rows)
            outcome.rows.extend(rows)
            cause = exc.__cause__ if isinstance(exc, AttackInterrupted) else None
            reason = (
                "interrupted by the user"
                if isinstance(exc, KeyboardInterrupt) or isinstance(cause, KeyboardInterrupt)
                else str(cause or exc) or type(cause or exc).__name__
            )
            raise JobInterrupted(
                f"stopped at images {start}-{stop - 1}: {reason}",
                outcome.rows,
                scored_inputs=outcome.scored_inputs,
            ) from (cause or exc)
        if on_part is not None:
            on_part(
                {
                    "chunk": k,
                    "scored_inputs": res.scored_inputs,
                    "seconds": round(res.seconds, 3),
                    "complete": True,
                    **res.surrogate,
                }
            )
        new = [r for r in job.with_dataset_indices(res.rows) if r["index"] not in done_set]
        if on_examples is not None and new:
            on_examples(res.result, _not_done(start, stop - start, done_set), new)
        if on_rows is not None and new:
            on_rows(new)
        done_set.update(r["index"] for r in new)
        res.rows = new
        outcome.rows.extend(new)
        outcome.chunks.append(res)
        outcome.scored_inputs += res.scored_inputs
        for key, value in res.surrogate.items():
            outcome.surrogate[key] = outcome.surrogate.get(key, 0) + value
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _not_done(start: int, n: int, done: Collection[int]) -> Tensor:
    """Bool ``(n,)``: which images of a chunk starting at ``start`` are not in ``done``."""
    return torch.tensor([start + i not in done for i in range(n)], dtype=torch.bool)


def merge_results(results: list[Any]) -> Any:
    """Concatenate chunk results (in order) into one: per-image tensors and lists are joined,
    run-wide values (norm, eps) come from the first chunk. Serves score-based
    :class:`AttackResult` and hard-label ``DecisionResult`` alike (both dataclasses)."""
    first = results[0]
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if isinstance(value, Tensor):
            merged[f.name] = torch.cat([getattr(r, f.name) for r in results])
        elif isinstance(value, list):
            merged[f.name] = [item for r in results for item in getattr(r, f.name)]
        else:
            merged[f.name] = value
    return type(first)(**merged)
