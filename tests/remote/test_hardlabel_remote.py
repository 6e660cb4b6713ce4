"""A labels-only server (`zoattack serve --output labels`) attacked end to end with a
hard-label attack: same rows as the in-process --labels-only run, every scored input on the
server's ledger, and score attacks pointed at --attack."""

from __future__ import annotations

import csv
import json

import httpx
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()
ARGS = ("run", "--images", "4", "--budget", "50", "--chunk-size", "2", "--device", "cpu")


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_labels_server_attacked_end_to_end(victim, app_for, serve, tmp_path):
    attack = ("--attack", "rays", "--norm", "linf")
    local = runner.invoke(app, [*ARGS, *attack, "--labels-only", "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    with serve(app_for(victim, output="labels")) as server:
        res = runner.invoke(
            app,
            [*ARGS, *attack, "--model", f"remote:{server.url}", "--json"]
            + ["--out", str(tmp_path / "remote")],
        )
        assert res.exit_code == 0, res.output
        stats = httpx.get(f"{server.url}/stats").json()
    summary = json.loads(res.stdout)["summary"]
    rows = _rows(tmp_path / "remote" / "per_image.csv")
    # the server scored exactly what the run's ledger counts
    assert (
        stats["scored_inputs"] == summary["scored_inputs"] == sum(int(r["queries"]) for r in rows)
    )
    # the same attack through the wire and in process: identical rows
    assert rows == _rows(tmp_path / "local" / "per_image.csv")


def test_score_attack_on_labels_server_points_at_hard_label_attacks(victim, app_for, serve):
    with serve(app_for(victim, output="labels")) as server:
        res = runner.invoke(app, [*ARGS, "--model", f"remote:{server.url}"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "labels only" in text and "--attack hsja" in text
    assert "Traceback" not in res.output


def test_decision_attack_on_a_scores_server_needs_labels_only(victim, app_for, serve):
    with serve(app_for(victim)) as server:
        res = runner.invoke(app, [*ARGS, "--attack", "hsja", "--model", f"remote:{server.url}"])
        assert res.exit_code == 2, res.output
        assert "--labels-only" in " ".join(res.output.split())
        ok = runner.invoke(
            app,
            [*ARGS, "--attack", "hsja", "--labels-only", "--model", f"remote:{server.url}"],
        )
        assert ok.exit_code == 0, ok.output
