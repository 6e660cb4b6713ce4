"""`zoattack list` prints from zoattack/cli/catalog.json (no torch); it must say what the
live registries say."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from zoattack.cli import list_cmd
from zoattack.cli.main import app


def test_catalog_matches_the_live_registries():
    shipped = json.loads(list_cmd.CATALOG.read_text())
    live = json.loads(json.dumps(list_cmd.build_catalog()))  # tuples -> lists, as stored
    assert shipped == live, (
        "zoattack/cli/catalog.json is stale: run `python -m zoattack.cli.list_cmd --write`"
    )


def test_list_falls_back_to_the_registries_without_a_catalog(tmp_path, monkeypatch):
    monkeypatch.setattr(list_cmd, "CATALOG", tmp_path / "missing.json")
    res = CliRunner().invoke(app, ["list", "estimators", "--markdown"])
    assert res.exit_code == 0, res.output
    assert "| `" in res.stdout


def test_bare_list_names_the_kinds():
    res = CliRunner().invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    for kind in list_cmd.KINDS:
        assert kind in res.stdout
