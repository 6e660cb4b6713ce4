"""Attack names and default radii: the parts of the one resolver (``AttackSpec.resolved``)
that `zoattack run`, plan batches and :func:`zoattack.attack` share.

One option names the attack (``attack``): ``square`` and ``sign`` (search rules), ``zo`` (a
core rule x estimator, picked with ``optimizer``/``estimator``), and the hard-label attacks
``hsja``, ``sign_opt``, ``rays``, ``opt`` and ``auto``. A score-based name is folded into the
``optimizer`` field before anything else is resolved, so a spec given ``attack="square"``
resolves to exactly the spec ``optimizer="square"`` always resolved to: run.json, resume
checks and batch job keys of older runs and stores are unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoattack.jobs.attack import AttackSpec

# `--attack zo` without --optimizer: the gradient rule with the best Linf success on its
# paper's estimator in docs/TUNING.md's 100-image small_cnn table (zo_adamm, 68%; at L2 every
# rule is within 5 points of the others).
ZO_DEFAULT_RULE = "zo_adamm"
ZO = "zo"


def search_rules() -> list[str]:
    """Score-based rules that are whole attacks of their own (no estimator): square, sign."""
    from zoattack.optim import OPTIMIZERS

    return [e.name for e in OPTIMIZERS if e.flags.get("search")]


def gradient_rules() -> list[str]:
    from zoattack.optim import OPTIMIZERS

    return [e.name for e in OPTIMIZERS if not e.flags.get("search")]


def surrogate_attack_names() -> list[str]:
    """Score-based attacks driven by a surrogate ensemble (``--surrogates``): gfcs, transfer."""
    from zoattack.attacks.surrogates import SURROGATE_ATTACKS

    return [e.name for e in SURROGATE_ATTACKS]


def score_attack_names() -> list[str]:
    return [*search_rules(), ZO, *surrogate_attack_names()]


def attack_names() -> list[str]:
    """Every name ``--attack`` takes, score-based first."""
    from zoattack.attacks.hardlabel import DECISION_ATTACKS

    return [*score_attack_names(), *(e.name for e in DECISION_ATTACKS), "auto"]


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def fold_attack(spec: AttackSpec) -> AttackSpec:
    """``spec`` with a score-based ``attack`` name moved into ``optimizer`` (``attack`` None),
    refusing combinations that name two different attacks. Hard-label names stay."""
    if spec.attack is None:
        return spec
    name = _key(spec.attack)
    rule = _key(spec.optimizer) if spec.optimizer is not None else None
    if name == ZO:
        if rule is not None and rule in search_rules():
            raise ValueError(
                f"--attack zo runs a core gradient rule; {rule} is an attack of its own: "
                f"pass --attack {rule} (and drop --optimizer)"
            )
        return dataclasses.replace(spec, attack=None, optimizer=spec.optimizer or ZO_DEFAULT_RULE)
    if name in search_rules():
        if rule is not None and rule != name:
            raise ValueError(
                f"--attack {name} and --optimizer {spec.optimizer} name two attacks; "
                f"drop --optimizer (a core rule runs with --attack zo --optimizer RULE)"
            )
        return dataclasses.replace(spec, attack=None, optimizer=name)
    if name in gradient_rules():
        raise ValueError(
            f"{name} is a core update rule, not an attack name: pass --attack zo "
            f"--optimizer {name} (or --optimizer {name} alone)"
        )
    if name in surrogate_attack_names():
        return dataclasses.replace(spec, attack=name)
    if name == "auto" or name in _decision_names():
        return spec
    from zoattack.errors import UnknownNameError

    raise UnknownNameError("attack", spec.attack, attack_names())


def _decision_names() -> list[str]:
    from zoattack.attacks.hardlabel import DECISION_ATTACKS

    names = [e.name for e in DECISION_ATTACKS]
    return names + [a for e in DECISION_ATTACKS for a in e.aliases]


def optimizer_note(optimizer: str | None, attack: str | None) -> str | None:
    """The one-line note for ``--optimizer square|sign`` without ``--attack`` (still works)."""
    if optimizer is None or attack is not None:
        return None
    rule = _key(optimizer)
    if rule in search_rules():
        return f"note: --optimizer {rule} runs the attack {rule}; its name is now --attack {rule}"
    return None


def default_eps(norm: str, dataset: str | None = None) -> float:
    """The radius an attack runs at when no eps is given: the data set's conventional threat
    model when it is known (:func:`zoattack.data.registry.conventional_eps`), else the norm's
    default for images in [0, 1]. :func:`zoattack.jobs.attack.resolve_eps` is built on the
    same lookup, so the CLI, plan batches and :func:`zoattack.attack` agree."""
    from zoattack.data.registry import conventional_eps

    return conventional_eps(dataset, norm)[0]
