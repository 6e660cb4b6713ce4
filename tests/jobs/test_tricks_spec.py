"""The generic tricks through AttackSpec and `zoattack run`: tuned defaults resolve from the
registry, options override, bad values are one clear line (exit 2), the method says what ran."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.jobs.attack import TRICKS, AttackSpec, effective_settings, method_of
from zoattack.norms import NORMS
from zoattack.optim import OPTIMIZERS

GRADIENT = [e.name for e in OPTIMIZERS if not e.flags.get("search")]
NEUTRAL = {"start": "zero", "restart": 0, "mu_decay": 1.0, "lr_decay": "constant"}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("rule", GRADIENT)
def test_bare_optimizer_resolves_the_tuned_tricks(rule, norm):
    tuned = OPTIMIZERS.get(rule).tuned(norm)
    spec = AttackSpec(optimizer=rule, norm=norm).resolved()
    made = spec.make_rule()
    for key in TRICKS:
        want = getattr(tuned, key)
        assert getattr(spec, key) == want
        assert getattr(made, key) == (NEUTRAL[key] if want is None else want)


@pytest.mark.parametrize("rule", GRADIENT)
def test_options_override_and_the_method_names_every_trick(rule):
    spec = AttackSpec(
        optimizer=rule,
        norm="linf",
        start="stripes",
        restart=7,
        mu_decay=0.25,
        lr_decay="halving",
    ).resolved()
    rule_obj = spec.make_rule()
    assert (rule_obj.start, rule_obj.restart, rule_obj.mu_decay, rule_obj.lr_decay) == (
        "stripes",
        7,
        0.25,
        "halving",
    )
    method = method_of(spec)
    for words in (
        "stripes vertex",
        "after 7 steps without improvement",
        "to 0.25 x",
        "APGD's checkpoints",
    ):
        assert words in method
    settings = effective_settings(spec)
    assert settings["restart"] == 7 and settings["start"] == "stripes"


def test_tricks_off_leave_the_settings_and_method_as_before():
    spec = AttackSpec(
        optimizer="zo_signsgd",
        norm="linf",
        start="zero",
        restart=0,
        mu_decay=1.0,
        lr_decay="constant",
    ).resolved()
    method = method_of(spec)
    assert "restart" not in method and "vertex" not in method and "decays" not in method
    # an explicit estimator swap drops the tuned tricks (they were tuned with the paper's)
    swapped = AttackSpec(optimizer="zo_adamm", norm="linf", estimator="gaussian").resolved()
    assert all(getattr(swapped, k) is None for k in TRICKS)


@pytest.mark.parametrize(
    "bad,words",
    [
        (["--start", "corner"], "start must be one of"),
        (["--restart", "-3"], "restart"),
        (["--mu-decay", "0"], "mu_decay"),
        (["--mu-decay", "2"], "mu_decay"),
        (["--lr-decay", "cosine"], "lr_decay must be one of"),
        (["--optimizer", "square", "--restart", "5"], "search rule"),
        (["--optimizer", "sign", "--start", "stripes"], "search rule"),
    ],
)
def test_bad_trick_options_exit_2_with_one_line(tmp_path, bad, words):
    args = ["run", "--images", "2", "--budget", "20", "--out", str(tmp_path / "o")]
    if "--optimizer" not in bad:
        args += ["--optimizer", "zo_signsgd"]
    res = CliRunner().invoke(app, [*args, *bad])
    assert res.exit_code == 2, res.output
    assert words in res.output
    assert "Traceback" not in res.output


def test_run_records_the_tricks(tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--optimizer",
            "lizo",
            "--images",
            "3",
            "--budget",
            "40",
            "--seed",
            "1",
            "--restart",
            "3",
            "--start",
            "stripes",
            "--mu-decay",
            "0.5",
            "--lr-decay",
            "halving",
            "--momentum",
            "0.9",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["restart"] == 3 and settings["lr_decay"] == "halving"
    assert "momentum 0.9" in settings["method"] and "restart" in settings["method"]
    assert "estimator lizo, the paper's" in settings["method"]
