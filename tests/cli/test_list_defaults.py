"""`zoattack list optimizers|models --defaults` print the registry entries' defaults."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.models import MODELS
from zoattack.norms import NORMS
from zoattack.optim import OPTIMIZERS

runner = CliRunner()


def markdown_rows(*args: str) -> tuple[list[str], list[list[str]]]:
    res = runner.invoke(app, ["list", *args, "--defaults", "--markdown"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("|")]
    cells = [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def test_optimizer_defaults_per_norm_match_the_registry():
    header, rows = markdown_rows("optimizers")
    by_key = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    expected = 0
    for entry in OPTIMIZERS:
        for norm in NORMS:
            if norm not in entry.norm_defaults:
                assert (entry.name, norm) not in by_key
                continue
            expected += 1
            tuned, row = entry.norm_defaults[norm], by_key[(entry.name, norm)]
            assert row["lr"] == f"{tuned.lr:g} eps"
            if tuned.estimator is not None:
                assert row["estimator"].split(" ")[0].rstrip("*") == tuned.estimator
            if tuned.mu is not None:
                assert row["mu"] == f"{tuned.mu:g} eps"
            assert (row["default"] == "yes") == tuned.default
        if entry.optimize_defaults is not None:
            expected += 1
            assert by_key[(entry.name, "optimize")]["lr"] == f"{entry.optimize_defaults.lr:g}"
    assert len(rows) == expected
    # Each norm has exactly one default attack.
    for norm in NORMS:
        assert sum(1 for r in by_key.values() if r["setting"] == norm and r["default"]) == 1


def test_estimator_column_marks_the_paper_pairing():
    _, rows = markdown_rows("optimizers")
    lizo_l2 = next(r for r in rows if r[:2] == ["lizo", "l2"])
    assert "lizo*" in lizo_l2


def test_plain_list_names_each_rules_default_estimator():
    header, rows = markdown_rows_plain("optimizers")
    col = header.index("estimator")
    by_name = {r[0]: r[col] for r in rows}
    for entry in OPTIMIZERS:
        if entry.flags.get("search"):
            assert by_name[entry.name] == ""
        else:
            assert by_name[entry.name] == f"{entry.factory.default_estimator}*"
    assert "deterministic" in next(r for r in rows if r[0] == "lizo")[header.index("description")]


def markdown_rows_plain(kind: str) -> tuple[list[str], list[list[str]]]:
    res = runner.invoke(app, ["list", kind, "--markdown"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("|")]
    cells = [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def test_model_defaults_are_the_training_recipes():
    header, rows = markdown_rows("models")
    assert header == ["name", "epochs", "lr", "optimizer", "weight_decay", "augment"]
    with_recipe = [e for e in MODELS if e.recipe is not None]
    assert {r[0] for r in rows} == {e.name for e in with_recipe} >= {"small_cnn", "resnet20"}
    for e in with_recipe:
        row = next(r for r in rows if r[0] == e.name)
        values = e.recipe.as_dict().values()
        assert row[1:] == [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


def test_table_form_and_refusal():
    res = runner.invoke(app, ["list", "optimizers", "--defaults"])
    assert res.exit_code == 0
    assert re.search(r"sign\s+│\s+linf\s+│\s+1 eps", res.stdout)
    assert "docs/TUNING.md" in res.stdout
    res = runner.invoke(app, ["list", "estimators", "--defaults"])
    assert res.exit_code == 2
    assert "--defaults lists optimizers and models" in res.stderr
