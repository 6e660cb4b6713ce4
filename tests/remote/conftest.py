"""Shared pieces for the remote tests: the bundled victim, a few test images, and servers run
by uvicorn on 127.0.0.1 (free ports) in background threads that the fixtures always stop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from zoattack.data import load_dataset
from zoattack.models import create_model
from zoattack.remote.server import BackgroundServer, create_app


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(one_thread):
    """Tiny batches on a shared 2-core machine: one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def data():
    return load_dataset("fashion-mnist", split="test", limit=12)


@pytest.fixture(scope="session")
def victim(data):
    return create_model("small_cnn", dataset=data, pretrained=True, device="cpu")


def make_app(model: torch.nn.Module, **kwargs: Any):
    kw = {"input_shape": (1, 28, 28), "num_classes": 10, **kwargs}
    return create_app(model, **kw)


@contextmanager
def serving(app: Any, port: int = 0) -> Iterator[BackgroundServer]:
    server = BackgroundServer(app, port=port).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def serve():
    """``serve(app, port=0)``: a context manager running ``app`` (helpers as fixtures because
    test folders here are not packages)."""
    return serving


@pytest.fixture(scope="session")
def app_for():
    """``app_for(model, **create_app_kwargs)`` with the Fashion-MNIST shapes filled in."""
    return make_app


@pytest.fixture()
def healthy(victim) -> Iterator[BackgroundServer]:
    with serving(make_app(victim)) as server:
        yield server


class NaNModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 10)
        out[0, 3] = float("nan")
        return out


@pytest.fixture(scope="session")
def nan_model():
    return NaNModel()
