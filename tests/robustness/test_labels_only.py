"""Issue 10 item 3: a labels-only model is never attacked (or trained against) as if it gave
scores; the refusal is one line, exit 2, before any file is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoattack.blackbox import BlackBox
from zoattack.errors import LabelsOnlyError
from zoattack.jobs.attack import AttackSpec, prepare
from zoattack.remote.client import ScoreAPI, remote_model


def test_remote_client_learns_the_output_kind(labels_server):
    model = remote_model(labels_server.url)
    try:
        assert model.output_kind == "labels"
        with pytest.raises(LabelsOnlyError, match="labels only"):
            BlackBox(model, output="logits")
        with pytest.raises(LabelsOnlyError):
            BlackBox(model, output="probs")
        # Labels are what it gives, and labels it may be asked for.
        bb = BlackBox(model, output="labels", input_shape=(1, 28, 28))
        labels = bb.query(torch.full((3, 1, 28, 28), 0.5))
        assert labels.dtype == torch.int64 and labels.shape == (3,)
        assert bb.total_queries == 3
    finally:
        model.close()


def test_job_prepare_refuses_a_labels_server(labels_server):
    spec = AttackSpec(model=f"remote:{labels_server.url}", images=2, budget=10, device="cpu")
    with pytest.raises(LabelsOnlyError, match="hard-label"):
        prepare(spec)


def test_run_on_labels_server_is_one_line_and_writes_nothing(labels_server, tmp_path, zo_cli):
    out = tmp_path / "run"
    res = zo_cli(
        "run",
        "--model",
        f"remote:{labels_server.url}",
        "--images",
        "2",
        "--budget",
        "10",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert res.exit_code == 2, res.output
    assert "labels only" in res.output and "hard-label" in res.output
    assert not out.exists()


def test_defend_train_on_labels_server_refuses(labels_server, tmp_path, zo_cli):
    out = tmp_path / "defense"
    res = zo_cli(
        "defend",
        "train",
        "--model",
        f"remote:{labels_server.url}",
        "--dataset",
        "fashion-mnist",
        "--train-images",
        "8",
        "--epochs",
        "1",
        "--ae-epochs",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert res.exit_code == 2, res.output
    assert "labels only" in res.output
    assert not out.exists() or not any(out.iterdir())


def test_score_api_returning_a_class_is_refused_as_scores():
    api = ScoreAPI(
        "http://127.0.0.1:9/classify", input_shape=(1, 4, 4), num_classes=3, output="labels"
    )
    try:
        assert api.output_kind == "labels"
        with pytest.raises(LabelsOnlyError):
            BlackBox(api, output="logits")
        BlackBox(api, output="labels")  # allowed
    finally:
        api.close()


def test_plain_modules_keep_working():
    # An nn.Module attribute that merely happens to be called "output" is not a declaration.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    net.output = torch.nn.Identity()  # type: ignore[attr-defined]
    net.eval()
    bb = BlackBox(net, output="logits", input_shape=(1, 2, 2))
    assert bb.query(torch.from_numpy(np.full((2, 1, 2, 2), 0.5, np.float32))).shape == (2, 3)
