"""``gfcs`` (issue 25): success on an easy case (a surrogate that is the victim with slightly
perturbed weights), victim queries exactly as the ledger says, at most two per step, and the
same rows from the API and the CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from test_surrogates import Counted, Net, perturbed  # same folder (rootless tests)

import zoattack
from zoattack.errors import InvalidInputError


@pytest.fixture
def easy() -> tuple[Net, torch.Tensor, torch.Tensor]:
    victim = Net()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = victim(x).argmax(dim=1)
    return victim, x, y


def test_surrogate_attacks_need_surrogates(easy) -> None:
    victim, x, y = easy
    for name in ("gfcs",):
        with pytest.raises(InvalidInputError, match="--surrogates"):
            zoattack.attack(victim, x, y, attack=name, budget=20)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_gfcs_succeeds_and_counts_exactly(easy, norm) -> None:
    victim, x, y = easy
    counted = Counted(victim)
    eps = 1.0 if norm == "l2" else 0.2
    res = zoattack.attack(
        counted, x, y, attack="gfcs", surrogates=[perturbed(victim)], norm=norm, eps=eps,
        budget=100, seed=1,
    )  # fmt: skip
    assert res.success.float().mean() >= 0.75
    assert counted.rows == int(res.queries.sum())  # the ledger is exactly the victim's rows
    assert bool((res.queries <= 100).all())
    label = "the paper's L2 algorithm" if norm == "l2" else "Linf variant"
    assert label in res.method
    dist = res.l2 if norm == "l2" else res.linf
    assert bool((dist <= eps * (1 + 1e-5)).all())


def test_gfcs_spends_at_most_two_queries_per_step(easy) -> None:
    """Without a useful surrogate nothing succeeds and each image's spend stays in budget,
    one clean check plus at most two queries a step."""
    victim, x, y = easy
    calls: list[int] = []

    class Rows(Counted):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            calls.append(z.shape[0])
            return super().forward(z)

    res = zoattack.attack(
        Rows(victim), x, y, attack="gfcs", surrogates=[Net(seed=9)], eps=0.01, budget=11
    )
    assert bool((res.queries <= 11).all())
    assert calls[0] == len(y)  # the clean check, then steps of +/- candidates
    assert max(calls[1:]) <= len(y)


def test_gfcs_is_deterministic_given_the_seed(easy) -> None:
    victim, x, y = easy
    sur = perturbed(victim)
    a = zoattack.attack(victim, x, y, attack="gfcs", surrogates=[sur], norm="l2", eps=0.5,
                        budget=30, seed=3)  # fmt: skip
    b = zoattack.attack(victim, x, y, attack="gfcs", surrogates=[sur], norm="l2", eps=0.5,
                        budget=30, seed=3)  # fmt: skip
    assert a.queries.tolist() == b.queries.tolist()
    torch.testing.assert_close(a.x_adv, b.x_adv)


def test_cli_rows_equal_the_api_rows_and_passes_are_recorded_apart(tmp_path) -> None:
    from typer.testing import CliRunner

    from zoattack.cli.main import app
    from zoattack.data import load_dataset

    def zo_cli_run(*args: str):
        return CliRunner().invoke(app, list(args))

    from zoattack.models import create_model

    out = tmp_path / "run"
    common = ["--images", "2", "--budget", "12", "--norm", "l2", "--eps", "1.0"]
    res = zo_cli_run("run", "--attack", "gfcs", "--model", "small_cnn", "--surrogates",
                     "resnet20", *common, "--device", "cpu", "--out", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    data = load_dataset("fashion-mnist", split="test", limit=2)
    victim = create_model("small_cnn", dataset=data, pretrained=True, device="cpu")
    api = zoattack.attack(victim, data.images, data.labels, attack="gfcs",
                          surrogates=["resnet20"], dataset="fashion-mnist", norm="l2",
                          eps=1.0, budget=12, device="cpu")  # fmt: skip
    assert [int(r["queries"]) for r in rows] == api.queries.tolist()
    assert [r["success"] in ("True", "true", "1") for r in rows] == api.success.tolist()
    meta = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert meta["surrogate_grads"] == summary["surrogate_grads"] > 0
    assert summary["scored_inputs"] == sum(int(r["queries"]) for r in rows)
    assert "surrogate_grads" in summary["counting_rule"]
