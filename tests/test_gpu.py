"""The --device cuda paths: attacks, the CLI, defense training and certification on a GPU.

Marked ``gpu``: tests/conftest.py skips them where no CUDA device is visible. The CPU suite
covers the same logic; these catch what only a second device exposes (tensors left on the
wrong device, CPU-only generators, ledgers that must stay on the CPU).
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from zoattack import BlackBox, create_optimizer, make_generator
from zoattack.attacks import run_attack
from zoattack.attacks.universal import run_universal
from zoattack.device import resolve_device
from zoattack.norms import distance
from zoattack.optim import OPTIMIZERS

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _invoke(*args: str):
    from zoattack.cli.main import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def cuda_victim(digits_victim):
    model, x, y = digits_victim
    return model.to(CUDA), x.to(CUDA), y.to(CUDA)


def test_auto_picks_the_gpu():
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize(
    ("rule", "norm", "eps"),
    [
        ("zo_signsgd", "linf", 0.2),
        ("zo_adamm", "l2", 1.5),
        ("lizo", "l2", 1.5),
        ("square", "linf", 0.2),
    ],
)
def test_attack_on_cuda_keeps_threat_model_budget_and_global_rng(cuda_victim, rule, norm, eps):
    model, x, y = cuda_victim
    budget = 200
    bb = BlackBox(model, output="logits", budget=budget)
    extra = {"norm": norm, "budget": budget} if OPTIMIZERS.get(rule).flags.get("search") else {}
    r = create_optimizer(rule, lr=0.1 if norm == "linf" else 0.5, **extra)
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    res = run_attack(
        bb,
        x,
        y,
        r,
        generator=make_generator(0, CUDA),
        norm=norm,
        eps=eps,
        budget=budget,
        subspace="tile:4>full",
    )
    assert res.x_adv.device.type == "cuda"
    assert bool((distance(res.x_adv, x, norm) <= eps * (1 + 1e-5)).all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert int(res.queries.max()) <= budget
    assert torch.equal(res.queries, bb.queries_of(torch.arange(len(x))))
    assert res.success[res.clean_correct].float().mean() > 0.3  # the attack does attack
    # Library code draws from the generator it is given, never from torch's global RNGs.
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)


def test_same_seed_same_result_on_cuda(cuda_victim):
    model, x, y = cuda_victim

    def once():
        bb = BlackBox(model, output="logits", budget=120)
        return run_attack(
            bb,
            x,
            y,
            create_optimizer("zo_signsgd", lr=0.1),
            generator=make_generator(7, CUDA),
            norm="linf",
            eps=0.2,
            budget=120,
        )

    a, b = once(), once()
    assert torch.equal(a.queries, b.queries)
    assert a.stop_reason == b.stop_reason
    assert torch.equal(a.x_adv, b.x_adv)


def test_universal_on_cuda(cuda_victim):
    model, x, y = cuda_victim
    bb = BlackBox(model, output="logits")
    res = run_universal(
        bb,
        x[:16],
        y[:16],
        create_optimizer("zo_signsgd", lr=0.05),
        generator=make_generator(1, CUDA),
        norm="linf",
        eps=0.2,
        budget=30,
    )
    assert res.linf <= 0.2 + 1e-6
    assert int(res.queries.max()) <= 30


def test_cli_run_on_cuda(tmp_path):
    out = tmp_path / "run"
    _invoke(
        "run", "--device", "cuda", "--images", "6", "--budget", "40", "--chunk-size", "3",
        "--seed", "3", "--out", out,
    )  # fmt: skip
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert all(int(r["queries"]) <= 40 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert "cuda" in json.dumps(summary)


def test_cli_optimize_on_cuda():
    res = _invoke(
        "optimize", "--device", "cuda", "--dim", "10", "--budget", "50", "--optimizer", "zo_sgd",
        "--json",
    )  # fmt: skip
    summary = json.loads(res.stdout)
    assert max(summary["queries"]) <= 50
    assert summary["final_loss"] != summary["initial_loss"]


def test_defend_train_and_certify_on_cuda(tmp_path):
    d = tmp_path / "def"
    _invoke(
        "defend", "train", "--device", "cuda", "--train-images", "16", "--latent", "16",
        "--ae-epochs", "1", "--epochs", "1", "--batch-size", "8", "--estimator", "sphere",
        "-q", "2", "--denoiser-depth", "3", "--denoiser-width", "4", "--out", d,
    )  # fmt: skip
    card = json.loads((d / "defense.json").read_text())
    assert card["complete"] and card["queries"]["train_blackbox"] > 0
    # --resume of a finished run on the GPU: the checkpoint's generator state is a CUDA one.
    _invoke(
        "defend", "train", "--device", "cuda", "--train-images", "16", "--latent", "16",
        "--ae-epochs", "1", "--epochs", "2", "--batch-size", "8", "--estimator", "sphere",
        "-q", "2", "--denoiser-depth", "3", "--denoiser-width", "4", "--out", d, "--resume",
    )  # fmt: skip
    assert json.loads((d / "defense.json").read_text())["epochs_done"] == 2
    _invoke(
        "defend", "certify", "--defense", d, "--device", "cuda", "--n0", "8", "--n", "40",
        "--images", "2", "--batch", "64", "--out", tmp_path / "cert",
    )  # fmt: skip
    cert = json.loads((tmp_path / "cert" / "certify.json").read_text())
    assert cert["queries"]["certify_blackbox"] == 2 * (8 + 40)
