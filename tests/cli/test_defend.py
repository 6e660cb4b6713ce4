"""`zoattack defend train` / `certify` end to end on the bundled Fashion-MNIST (seconds)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app

runner = CliRunner()
TINY = [
    "--model",
    "small_cnn",
    "--dataset",
    "fashion-mnist",
    "--train-images",
    "24",
    "--latent",
    "16",
    "--ae-epochs",
    "2",
    "--epochs",
    "1",
    "--batch-size",
    "12",
    "--estimator",
    "sphere",
    "-q",
    "3",
    "--denoiser-depth",
    "3",
    "--denoiser-width",
    "4",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--seed",
    "1",
]
CERT = [
    "--n0",
    "8",
    "--n",
    "60",
    "--images",
    "3",
    "--batch",
    "64",
    "--device",
    "cpu",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("defense")
    res = runner.invoke(app, ["defend", "train", *TINY, "--out", str(out)])
    return res, out


def test_train_writes_defense_and_reports_queries(trained):
    res, out = trained
    assert res.exit_code == 0, res.output
    card = json.loads((out / "defense.json").read_text())
    assert card["method"] == "zo-ae-ds" and card["epochs_done"] == 1
    assert card["blackbox"]["model"] == "small_cnn" and card["data"]["count"] == 24
    assert card["data"]["split"] in ("train", "test")
    # 24 pseudo-labels, then per image: f(z) + 3 RGE directions (base shared).
    assert card["queries"]["train_blackbox"] == 24 + 24 * 4
    assert f"{card['queries']['train_blackbox']:,} black-box training queries" in res.stdout
    assert (out / "checkpoint.safetensors").is_file() and (out / "defense.safetensors").is_file()


def test_certify_rows_summary_curve_and_resume(trained, tmp_path):
    _, out = trained
    cdir = tmp_path / "cert"
    res = runner.invoke(
        app, ["defend", "certify", "--defense", str(out), *CERT, "--out", str(cdir)]
    )
    assert res.exit_code == 0, res.output
    with open(cdir / "certify.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "index",
        "label",
        "prediction",
        "radius",
        "correct",
        "abstain",
        "seconds",
        "queries",
    ]
    card = json.loads((out / "defense.json").read_text())
    start = card["data"]["count"] if card["data"]["split"] == "test" else 0
    assert [int(r["index"]) for r in rows] == [start, start + 1, start + 2]
    summary = json.loads((cdir / "certify.json").read_text())
    assert summary["queries"]["certify_blackbox"] == 3 * 68
    assert summary["queries"]["certify_blackbox_this_session"] == 3 * 68
    assert summary["queries"]["train_blackbox"] == card["queries"]["train_blackbox"]
    assert set(summary["certified_accuracy"]) == {"0", "0.25", "0.5", "0.75"}
    assert (cdir / "certified_accuracy.png").stat().st_size > 1000
    # Interrupted after one image: resume certifies only the rest, same rows.
    lines = (cdir / "certify.csv").read_text().splitlines()
    (cdir / "certify.csv").write_text("\n".join(lines[:2]) + "\n")
    res = runner.invoke(
        app, ["defend", "certify", "--defense", str(out), *CERT, "--out", str(cdir), "--resume"]
    )
    assert res.exit_code == 0, res.output
    again = json.loads((cdir / "certify.json").read_text())
    assert again["queries"]["certify_blackbox_this_session"] == 2 * 68
    assert again["certified_accuracy"] == summary["certified_accuracy"]
    with open(cdir / "certify.csv", newline="") as f:
        rows2 = list(csv.DictReader(f))
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(rows2) == drop(rows)


def test_train_resume_matches_uninterrupted(trained, tmp_path):
    _, ref = trained
    args = list(TINY)
    args[args.index("--epochs") + 1] = "0"
    cut = tmp_path / "cut"
    # --epochs 0 is refused; interrupt instead by running 1 AE epoch fewer, then resuming.
    res = runner.invoke(app, ["defend", "train", *args, "--out", str(cut)])
    assert res.exit_code == 2 and "--epochs must be >= 1" in res.stderr
    res = runner.invoke(app, ["defend", "train", *TINY, "--out", str(cut)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "defend",
            "train",
            *TINY[:-6],
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--seed",
            "1",
            "--out",
            str(cut),
            "--resume",
        ],
    )
    assert res.exit_code == 0, res.output
    card = json.loads((cut / "defense.json").read_text())
    assert card["epochs_done"] == 2
    assert card["queries"]["train_blackbox"] == 24 + 2 * 24 * 4


def test_run_attacks_the_defended_model(trained):
    _, out = trained
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            f"defended:{out}",
            "--dataset",
            "fashion-mnist",
            "--images",
            "2",
            "--budget",
            "30",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    from zoattack.models import create_model

    x = torch.rand(2, 1, 28, 28)
    plain = create_model(f"defended:{out}", dataset="fashion-mnist")
    smooth = create_model(f"defended:{out},smooth=16,seed=3", dataset="fashion-mnist")
    assert plain(x).shape == (2, 10)
    scores = smooth(x)
    assert scores.shape == (2, 10) and bool(torch.isfinite(scores).all())
    # log((votes + 1) / (n + classes)) sums back to n votes.
    assert torch.allclose((scores.exp() * 26 - 1).sum(1), torch.full((2,), 16.0), atol=1e-3)


@pytest.mark.parametrize(
    "cmd, needle",
    [
        (["train", "--sigma", "0"], "--sigma must be > 0"),
        (["train", "--output", "labels"], "returns scores"),
        (["train", "--latent", "784"], "not smaller than the image"),
        (["train", "--method", "zo-xx"], "--method must be one of"),
        (["train", "--estimator", "nope"], "unknown estimator"),
        (["certify", "--sigma", "-1"], "--sigma must be > 0"),
        (["certify", "--n0", "500", "--n", "100"], "must not exceed --n"),
        (["certify", "--alpha", "1.5"], "--alpha must lie in"),
        (["certify", "--defense", "/nonexistent/defense"], "defense"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cmd, needle, trained, tmp_path):
    _, out = trained
    if cmd[0] == "train":
        args = ["defend", "train", *TINY, "--out", str(tmp_path / "t"), *cmd[1:]]
    else:
        args = [
            "defend",
            "certify",
            "--defense",
            str(out),
            *CERT,
            "--out",
            str(tmp_path / "c"),
            *cmd[1:],
        ]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.output


def test_certify_refuses_a_folder_holding_a_certification(trained, tmp_path):
    _, out = trained
    cdir = tmp_path / "cert"
    args = ["defend", "certify", "--defense", str(out), *CERT, "--images", "1", "--out", str(cdir)]
    assert runner.invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in cdir.iterdir()}
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "already holds a certification" in res.stderr and "--overwrite" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert {p.name: p.read_bytes() for p in cdir.iterdir()} == before  # nothing touched
    res = runner.invoke(app, [*args, "--resume", "--overwrite"])
    assert res.exit_code == 2 and "--overwrite replaces it" in res.stderr
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((cdir / "certify.json").read_text())["complete"] is True


def test_certify_is_a_library_call(trained, tmp_path):
    from zoattack.jobs.certify import certify_defense, read_rows

    _, out = trained
    seen: list[dict] = []
    report = certify_defense(
        out, n0=8, n=60, images=2, batch=64, device="cpu", out=tmp_path / "c", on_image=seen.append
    )
    assert report.result["complete"] is True and report.out == tmp_path / "c"
    assert [r["index"] for r in report.rows] == [r["index"] for r in seen]
    assert read_rows(tmp_path / "c" / "certify.csv") == report.rows
    assert report.result["queries"]["certify_blackbox"] == 2 * 68
    assert report.result["queries"]["certify_blackbox_this_session"] == 2 * 68
    card = json.loads((out / "defense.json").read_text())
    assert report.train_queries["blackbox"] == card["queries"]["train_blackbox"]
    with pytest.raises(ValueError, match="already holds a certification"):
        certify_defense(out, n0=8, n=60, images=2, batch=64, device="cpu", out=tmp_path / "c")


def test_train_resume_with_nothing_to_resume_leaves_no_folder(tmp_path):
    new = tmp_path / "new"
    res = runner.invoke(app, ["defend", "train", *TINY, "--out", str(new), "--resume"])
    assert res.exit_code == 2, res.output
    assert "nothing to resume" in res.stderr and "Traceback" not in res.output
    assert not new.exists()


def _cifar_folder(root, n_train=40, n_test=8):
    """A tiny CIFAR-10 'python version' folder in torchvision's layout."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_train // 5).tolist()
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    test = {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": [0] * n_test}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return root


@pytest.mark.parametrize(
    "dataset", ["cifar10", "fashion-mnist@3x32x32"], ids=["cifar10-files", "fmnist-view"]
)
def test_defend_paper_setting_at_3x32x32(tmp_path, dataset):
    """The paper's CIFAR set-up end to end: 192-d CIFAR autoencoder, 17x64 DnCNN, CGE over
    the latent, on CIFAR-10 files a user has (written here) and on the 3x32x32 view."""
    from safetensors.torch import save_file

    from zoattack.data import load_dataset
    from zoattack.models import create_model

    args = []
    if dataset == "cifar10":
        root = _cifar_folder(tmp_path / "data")
        args = ["--data-dir", str(root)]
    data = load_dataset(dataset, split="test", limit=2, data_dir=args[1] if args else None)
    net = create_model("small_cnn", dataset=data, generator=torch.Generator().manual_seed(0))
    weights = tmp_path / "victim.safetensors"
    save_file(net.state_dict(), str(weights))
    d = tmp_path / "def"
    res = runner.invoke(
        app,
        [
            "defend",
            "train",
            "--model",
            "small_cnn",
            "--weights",
            str(weights),
            "--dataset",
            dataset,
            *args,
            "--train-images",
            "4",
            "--ae-epochs",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            str(d),
        ],
    )
    assert res.exit_code == 0, res.output
    card = json.loads((d / "defense.json").read_text())
    arch = card["architecture"]
    assert arch["image_shape"] == [3, 32, 32]
    assert arch["autoencoder"] == {"arch": "cifar", "image_shape": [3, 32, 32], "latent": 192}
    assert (arch["denoiser"]["depth"], arch["denoiser"]["width"]) == (17, 64)
    assert card["blackbox"]["dataset"] == dataset
    # Pseudo-labels (4) + full forward CGE over 192 latent coordinates: 193 per image and step.
    assert card["queries"]["train_blackbox"] == 4 + 4 * 193
    res = runner.invoke(
        app,
        ["defend", "certify", "--defense", str(d), *args, "--n0", "4", "--n", "16"]
        + ["--images", "2", "--batch", "16", "--group", "2", "--device", "cpu"]
        + ["--out", str(tmp_path / "c")],
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "c" / "certify.csv").open()))
    assert [int(r["queries"]) for r in rows] == [20, 20]
    tp = json.loads((tmp_path / "c" / "certify.json").read_text())["throughput"]
    assert tp["images_per_second"] > 0 and tp["queries_per_image"] == 20


def test_defend_train_validation_and_augmentation_options(tmp_path):
    d = tmp_path / "def"
    res = runner.invoke(
        app, ["defend", "train", *TINY, "--val-images", "4", "--augment", "flip", "--out", str(d)]
    )
    assert res.exit_code == 0, res.output
    assert "kept epoch 1" in res.output
    card = json.loads((d / "defense.json").read_text())
    assert card["selection"]["val_images"] == 4 and card["selection"]["reference"] == "labels"
    assert card["config"]["augment"] == "flip" and card["train_images"] == 20
    res = runner.invoke(app, ["defend", "train", *TINY, "--augment", "rot", "--out", str(d)])
    assert res.exit_code == 2 and "--augment must be one of" in res.output


def test_certify_indices(trained, tmp_path):
    from zoattack.jobs.certify import certify_defense

    _, out = trained
    report = certify_defense(
        out, n0=8, n=60, batch=64, device="cpu", out=tmp_path / "c", indices="30,26"
    )
    assert sorted(r["index"] for r in report.rows) == [26, 30]
    assert report.result["settings"]["indices"] == "30,26"
    with pytest.raises(ValueError, match="drop --start and --skip"):
        certify_defense(out, n0=8, n=60, device="cpu", out=tmp_path / "d", indices="1", start=0)
    res = runner.invoke(
        app,
        ["defend", "certify", "--defense", str(out), *CERT, "--indices", "3,3"]
        + ["--out", str(tmp_path / "e")],
    )
    assert res.exit_code == 2 and "given twice" in res.output
