"""Registries: every entry builds, is described, resolves its aliases and declares its flags."""

from __future__ import annotations

import pytest

from zoattack import UnknownNameError
from zoattack.estimators import ESTIMATORS, GradientEstimator, create_estimator, list_estimators
from zoattack.optim import OPTIMIZERS, ZORule, create_optimizer, list_optimizers
from zoattack.registry import Entry, Registry

ESTIMATOR_FLAGS = ("stateful", "random")
OPTIMIZER_FLAGS = ("adaptive", "sign")


def test_registries_are_not_empty():
    assert len(ESTIMATORS) >= 1 and len(OPTIMIZERS) >= 1
    assert list_estimators() == ESTIMATORS.names()
    assert list_optimizers() == OPTIMIZERS.names()


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_estimator_entry(name):
    entry = ESTIMATORS.get(name)
    assert entry.description.strip()
    assert set(ESTIMATOR_FLAGS) <= set(entry.flags)
    est = create_estimator(name)
    assert isinstance(est, GradientEstimator)
    # The flag tests select by must agree with the class.
    assert entry.flags["stateful"] == type(est).stateful
    for alias in entry.aliases:
        assert ESTIMATORS.get(alias) is entry
        assert type(create_estimator(alias)) is type(est)
    assert ESTIMATORS.get(name.upper().replace("_", "-")) is entry  # case and dash tolerant
    assert repr(est)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_entry(name):
    entry = OPTIMIZERS.get(name)
    assert entry.description.strip()
    assert set(OPTIMIZER_FLAGS) <= set(entry.flags)
    rule = create_optimizer(name, lr=0.01)
    assert isinstance(rule, ZORule)
    if entry.flags.get("search", False):  # estimator-free candidate search
        assert rule.estimator is None
    else:
        assert isinstance(rule.estimator, GradientEstimator)
        assert rule.estimator.name in ESTIMATORS
    for alias in entry.aliases:
        assert OPTIMIZERS.get(alias) is entry
    assert repr(rule)


def test_flag_filters_select_exactly_the_flagged_entries():
    for flag in ESTIMATOR_FLAGS:
        on = set(ESTIMATORS.names(**{flag: True}))
        off = set(ESTIMATORS.names(**{flag: False}))
        assert on | off == set(ESTIMATORS.names()) and not on & off
    for flag in OPTIMIZER_FLAGS:
        on = set(OPTIMIZERS.names(**{flag: True}))
        off = set(OPTIMIZERS.names(**{flag: False}))
        assert on | off == set(OPTIMIZERS.names()) and not on & off


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean gaussian") as info:
        create_estimator("gausian")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownNameError, match="optimizer"):
        create_optimizer("no_such_rule_at_all", lr=0.1)


def test_none_kwargs_do_not_override_defaults():
    est = create_estimator("gaussian", num_samples=None, mu=None)
    default = create_estimator("gaussian")
    assert (est.num_samples, est.mu) == (default.num_samples, default.mu)


def test_registry_refuses_duplicates_and_applies_defaults():
    reg: Registry[dict] = Registry("thing")
    reg.register("a", description="first", aliases=("alpha",), defaults={"x": 1})(dict)
    assert reg.create("a") == {"x": 1}
    assert reg.create("alpha", x=2) == {"x": 2}
    assert "ALPHA" in reg and "b" not in reg and 3 not in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.add(Entry("alpha", dict, "clash"))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("b", description="x", aliases=("a",))(dict)
    assert reg.names("a*") == ["a"] and reg.names("z*") == []


def test_foreign_option_is_a_value_error_naming_it():
    from zoattack.optim import create_optimizer

    with pytest.raises(ValueError, match="does not take option 'momentum'"):
        create_optimizer("radazo", lr=0.1, momentum=0.9)
