"""Attack defaults come from each rule's registry entry, per norm, and explicit options win."""

from __future__ import annotations

import dataclasses

import pytest

from zoattack.jobs.attack import UNTUNED_LR, AttackSpec, default_lr, default_optimizer, tuned_mu
from zoattack.norms import DEFAULT_EPS, NORMS
from zoattack.optim import OPTIMIZERS
from zoattack.registry import Registry, Tuned

GRADIENT = [e.name for e in OPTIMIZERS if not e.flags.get("search")]
SEARCH = OPTIMIZERS.names(search=True)


@pytest.mark.parametrize("norm", NORMS)
def test_bare_run_uses_the_entry_marked_default(norm):
    spec = AttackSpec(norm=norm).resolved()
    assert spec.optimizer == default_optimizer(norm) == OPTIMIZERS.default_for(norm).name
    assert OPTIMIZERS.get(spec.optimizer).tuned(norm).default
    assert spec.eps == DEFAULT_EPS[norm]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("rule", GRADIENT)
def test_gradient_rule_resolves_to_its_tuned_entry(rule, norm):
    tuned = OPTIMIZERS.get(rule).tuned(norm)
    assert tuned.lr is not None, f"{rule} has no tuned lr under {norm}"
    eps = 0.05 if norm == "linf" else 2.0  # not the default eps: lr and mu scale with it
    spec = AttackSpec(optimizer=rule, norm=norm, eps=eps).resolved()
    assert spec.lr == pytest.approx(tuned.lr * eps)
    assert spec.subspace == (tuned.subspace or "full")
    assert spec.estimator == tuned.estimator
    assert spec.mu == (None if tuned.mu is None else pytest.approx(tuned.mu * eps))
    assert spec.momentum == tuned.momentum and spec.difference == tuned.difference


@pytest.mark.parametrize("rule", GRADIENT)
def test_explicit_options_override_and_other_estimators_drop_the_tuned_mu(rule):
    norm = "linf"
    tuned = OPTIMIZERS.get(rule).tuned(norm)
    spec = AttackSpec(optimizer=rule, norm=norm, lr=0.01, subspace="tile:7").resolved()
    assert spec.lr == 0.01 and spec.subspace == "tile:7"
    other = "gaussian" if tuned.estimator != "gaussian" else "sphere"
    spec = AttackSpec(optimizer=rule, norm=norm, estimator=other).resolved()
    # mu was tuned with its estimator only; another estimator keeps its own default radius
    assert spec.estimator == other and spec.mu is None


@pytest.mark.parametrize("rule", SEARCH)
def test_search_rules_take_eps_as_radius_and_nothing_else(rule):
    entry = OPTIMIZERS.get(rule)
    for norm in entry.flags["norms"]:
        spec = AttackSpec(optimizer=rule, norm=norm, eps=0.05).resolved()
        assert spec.lr == 0.05 == default_lr(rule, norm, 0.05)
        assert spec.subspace == "full" and spec.estimator is None and spec.mu is None


def test_untuned_pairs_fall_back(monkeypatch):
    assert tuned_mu("sign", "linf", 0.1) is None
    entry = OPTIMIZERS.get("zo_sgd")
    # The same rule with no tuned settings: what a newly registered rule gets.
    bare = dataclasses.replace(entry, norm_defaults={})
    monkeypatch.setitem(OPTIMIZERS._entries, "zo_sgd", bare)
    assert default_lr("zo_sgd", "l2", 1.5) == UNTUNED_LR * 1.5
    spec = AttackSpec(optimizer="zo_sgd", norm="l2").resolved()
    assert spec.lr == UNTUNED_LR * 1.5 and spec.subspace == "full"
    assert spec.estimator is None and spec.mu is None
    reg: Registry[object] = Registry("thing")
    reg.register("a", description="a", norm_defaults={"linf": Tuned(lr=3.0)})(object)
    assert reg.get("a").tuned("l2") == Tuned()


def test_default_for_needs_exactly_one_default():
    reg: Registry[object] = Registry("thing")
    reg.register("a", description="a", norm_defaults={"linf": Tuned(default=True)})(object)
    reg.register("b", description="b", norm_defaults={"l2": Tuned(lr=1.0)})(object)
    assert reg.default_for("linf").name == "a"
    with pytest.raises(ValueError, match="expected one default for l2, found none"):
        reg.default_for("l2")
    reg.register("c", description="c", norm_defaults={"linf": Tuned(default=True)})(object)
    with pytest.raises(ValueError, match="found a, c"):
        reg.default_for("linf")


def test_tuned_as_dict_lists_only_what_is_set():
    assert Tuned().as_dict() == {}
    assert Tuned(lr=2.0, estimator="block_sign", default=True).as_dict() == {
        "lr": 2.0,
        "estimator": "block_sign",
        "default": True,
    }


def test_defaults_for_unknown_norms_are_refused():
    reg: Registry[object] = Registry("thing")
    with pytest.raises(ValueError, match="unknown norm.*Linf; norms are linf, l2"):
        reg.register("a", description="a", norm_defaults={"Linf": Tuned(lr=1.0)})(object)
    assert "a" not in reg
