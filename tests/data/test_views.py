"""Data views (``NAME@CxHxW``): resized, channel-changed data sets for dimension studies."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.data import apply_view, dataset_spec, load_dataset, split_view


def test_split_view_parses_and_rejects():
    assert split_view("fashion-mnist") == ("fashion-mnist", None)
    assert split_view("fashion-mnist@3x32x32") == ("fashion-mnist", (3, 32, 32))
    assert split_view("cifar10@1X16x8") == ("cifar10", (1, 16, 8))
    for bad in ("fashion-mnist@32x32", "fashion-mnist@3x32", "x@axbxc", "fashion-mnist@"):
        with pytest.raises(ValueError, match="CxHxW"):
            split_view(bad)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        split_view("fashion-mnist@2x32x32")
    with pytest.raises(ValueError, match="height and width"):
        split_view("fashion-mnist@3x0x32")
    with pytest.raises(ValueError, match="names no data set"):
        split_view("@3x32x32")


def test_view_spec_shape_stats_and_name():
    spec = dataset_spec("fmnist@3x32x32")  # aliases resolve to the canonical name
    assert spec.name == "fashion-mnist@3x32x32"
    assert (spec.channels, spec.size, spec.num_classes) == (3, (32, 32), 10)
    assert spec.mean == (0.286,) * 3 and spec.std == (0.353,) * 3
    grey = dataset_spec("cifar10@1x32x32")
    assert grey.channels == 1 and len(grey.mean) == 1
    assert grey.mean[0] == pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465, 1e-3)


def test_load_view_resizes_and_repeats_channels():
    base = load_dataset("fashion-mnist", limit=4)
    view = load_dataset("fashion-mnist@3x32x32", limit=4)
    assert view.name == "fashion-mnist@3x32x32" and view.image_shape == (3, 32, 32)
    assert view.images.dtype == torch.float32
    assert float(view.images.min()) >= 0.0 and float(view.images.max()) <= 1.0
    assert torch.equal(view.labels, base.labels)
    assert torch.equal(view.images[:, 0], view.images[:, 2])  # grey repeated
    # Resampling keeps the picture: the mean brightness barely moves.
    assert torch.allclose(view.images.mean((1, 2, 3)), base.images.mean((1, 2, 3)), atol=0.02)
    # Same size and channels: the view is the identity.
    same = load_dataset("fashion-mnist@1x28x28", limit=4)
    assert torch.equal(same.images, base.images)


def test_apply_view_rgb_to_grey_is_luma():
    x = torch.zeros(1, 3, 4, 4)
    x[:, 1] = 1.0
    assert torch.allclose(apply_view(x, (1, 4, 4)), torch.full((1, 1, 4, 4), 0.587))


def test_view_of_cifar_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batch = {"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3, 4, 5]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    ds = load_dataset("cifar10@1x28x28", data_dir=str(tmp_path))
    assert ds.image_shape == (1, 28, 28) and len(ds) == 6


def test_cli_rejects_bad_view_in_one_line(tmp_path):
    res = CliRunner().invoke(
        app, ["run", "--dataset", "fashion-mnist@3x32", "--images", "2", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2
    assert "CxHxW" in res.output and "Traceback" not in res.output


def test_run_records_the_view(tmp_path):
    """`zoattack run` on a view: the model is built for 3x32x32 and run.json names the view."""
    import json

    from safetensors.torch import save_file

    from zoattack.models import create_model

    data = load_dataset("fashion-mnist@3x32x32", limit=2)
    net = create_model("small_cnn", dataset=data, generator=torch.Generator().manual_seed(0))
    weights = tmp_path / "w.safetensors"
    save_file(net.state_dict(), str(weights))
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            "small_cnn",
            "--weights",
            str(weights),
            "--dataset",
            "fashion-mnist@3x32x32",
            "--images",
            "2",
            "--budget",
            "20",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    text = json.dumps(json.loads((out / "run.json").read_text()))
    assert "fashion-mnist@3x32x32" in text


def test_batch_plan_accepts_views_and_rejects_bad_ones(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[defaults]\nmodel = "small_cnn"\ndataset = "fashion-mnist@3x32x32"\nimages = 2\n'
        "budget = 10\n[grid]\nseed = [0, 1]\n"
    )
    res = CliRunner().invoke(app, ["batch", str(plan), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "fashion-mnist@3x32x32" in res.output or "2 job" in res.output
    plan.write_text(plan.read_text().replace("@3x32x32", "@3x32"))
    res = CliRunner().invoke(app, ["batch", str(plan), "--dry-run"])
    assert res.exit_code == 2 and "CxHxW" in res.output and "Traceback" not in res.output
