"""Issue 12: a named rule runs its paper's estimator in every norm unless --estimator is
given, the recorded method says which estimator and tricks ran, and DAP runs in every mode."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zoattack import BlackBox, make_generator
from zoattack.attacks import run_attack
from zoattack.attacks.universal import run_universal
from zoattack.cli.main import app
from zoattack.jobs.attack import AttackSpec, method_of, spec_label
from zoattack.norms import NORMS
from zoattack.optim import OPTIMIZERS

GRADIENT = [e.name for e in OPTIMIZERS if not e.flags.get("search")]
PAPER = {e.name: e.factory.default_estimator for e in OPTIMIZERS if e.name in GRADIENT}


def test_paper_estimators_are_the_documented_ones():
    # ESTIMATORS.md: ReLIZO its LIZO estimator; ZO-AdaMM, R-AdaZO and ZO-signSGD sphere RGE
    # (the official codes); ZO-SGD Gaussian RGE.
    assert PAPER == {
        "lizo": "lizo",
        "radazo": "sphere",
        "zo_adamm": "sphere",
        "zo_sgd": "gaussian",
        "zo_signsgd": "sphere",
    }


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("rule", GRADIENT)
def test_default_estimator_is_the_papers_in_every_norm(rule, norm):
    spec = AttackSpec(optimizer=rule, norm=norm).resolved()
    assert spec.estimator == PAPER[rule]
    est = spec.make_rule().estimator
    assert est is not None and est.name == PAPER[rule]
    assert spec_label(spec) == f"{rule}+{PAPER[rule]}"
    method = method_of(spec)
    assert method.startswith(f"{rule} (estimator {PAPER[rule]}, the paper's")
    assert f"subspace {spec.subspace}" in method


@pytest.mark.parametrize("rule", GRADIENT)
def test_estimator_option_overrides_and_is_labelled_a_swap(rule):
    spec = AttackSpec(optimizer=rule, norm="linf", estimator="block_sign").resolved()
    assert spec.estimator == "block_sign"
    assert spec.make_rule().estimator.name == "block_sign"  # type: ignore[union-attr]
    assert spec_label(spec) == f"{rule}+block_sign"
    assert f"estimator block_sign instead of the paper's {PAPER[rule]}" in method_of(spec)
    # tuned mu/momentum belong to the paper's estimator and are not carried to another one
    assert spec.mu is None and spec.momentum is None


def test_bare_run_is_still_sign_at_linf():
    spec = AttackSpec(norm="linf").resolved()
    assert spec.optimizer == "sign" and spec.estimator is None
    assert method_of(spec).startswith("sign (search rule")


def test_lizo_method_says_reuse_on_and_reuse_is_refused_on_a_smoothed_model():
    spec = AttackSpec(optimizer="lizo", norm="l2").resolved()
    assert "reuse on" in method_of(spec)
    with pytest.raises(ValueError, match="deterministic"):
        AttackSpec(optimizer="lizo", model="defended:runs/d,smooth=20").resolved()
    # the same model without smoothing is deterministic; another estimator has no reuse
    AttackSpec(optimizer="lizo", model="defended:runs/d").resolved()
    ok = AttackSpec(optimizer="lizo", model="defended:runs/d,smooth=20", estimator="gaussian")
    assert "reuse" not in method_of(ok.resolved())


def test_run_json_summary_and_console_name_the_method(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["run", "--optimizer", "lizo", "--images", "2", "--budget", "30", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    method = json.loads((out / "run.json").read_text())["settings"]["method"]
    assert method.startswith("lizo (estimator lizo, the paper's; reuse on")
    assert "subspace tile:7>tile:14>full" in method
    assert json.loads((out / "summary.json").read_text())["settings"]["method"] == method
    assert "method: lizo (estimator lizo" in " ".join(res.output.split())


@pytest.fixture(scope="module")
def victim():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 128, generator=gen))
    x = torch.rand(4, 2, 8, 8, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


DAP_MODES = [
    ("linf", "full"),
    ("linf", "tile:4"),
    ("linf", "tile:2>tile:4>full"),
    ("l2", "dct:4"),
    ("l2", "tile:4>full"),
]


@pytest.mark.parametrize("rule", GRADIENT)
@pytest.mark.parametrize(("norm", "subspace"), DAP_MODES)
def test_dap_runs_per_image_in_every_norm_and_subspace(victim, rule, norm, subspace):
    model, x, y = victim
    eps = 0.3 if norm == "linf" else 3.0
    spec = AttackSpec(optimizer=rule, norm=norm, eps=eps, estimator="dap", budget=60).resolved()
    rule_obj = spec.make_rule()
    assert rule_obj.estimator is not None and rule_obj.estimator.name == "dap"
    bb = BlackBox(model, budget=60)
    res = run_attack(
        bb,
        x,
        y,
        rule_obj,
        generator=make_generator(1),
        norm=norm,
        eps=eps,
        budget=60,
        subspace=subspace,
    )
    assert int(res.queries.max()) <= 60
    assert torch.equal(res.queries, bb.queries_of(torch.arange(len(y))))
    bound = res.linf if norm == "linf" else res.l2
    assert float(bound.max()) <= eps + 1e-5
    # a step was taken: more than the clean check and the start were spent on some image
    assert int(res.queries.max()) > 2


@pytest.mark.parametrize(("norm", "subspace"), DAP_MODES)
def test_dap_runs_universal_in_every_norm_and_subspace(victim, norm, subspace):
    model, x, y = victim
    eps = 0.3 if norm == "linf" else 3.0
    spec = AttackSpec(optimizer="zo_adamm", norm=norm, eps=eps, estimator="dap").resolved()
    bb = BlackBox(model, budget=80)
    res = run_universal(
        bb,
        x,
        y,
        spec.make_rule(),
        generator=make_generator(2),
        norm=norm,
        eps=eps,
        budget=80,
        subspace=subspace,
    )
    assert int(res.queries.max()) <= 80
    assert res.evaluations > 3
    assert (res.linf if norm == "linf" else res.l2) <= eps + 1e-5
