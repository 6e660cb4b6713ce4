"""Shared pieces of the robustness tests: the bundled victim behind a loopback server, and a
CLI invoker that checks the error contract (exit 0/2/3, no traceback) on every call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from zoattack.data import load_dataset
from zoattack.models import create_model
from zoattack.remote.server import BackgroundServer, create_app


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(one_thread):
    """Tiny batches on a shared 2-core machine: one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def victim() -> Any:
    data = load_dataset("fashion-mnist", split="test", limit=4)
    return create_model("small_cnn", dataset=data, pretrained=True, device="cpu")


@pytest.fixture(scope="module")
def labels_server(victim) -> Iterator[BackgroundServer]:
    app = create_app(victim, input_shape=(1, 28, 28), num_classes=10, output="labels")
    server = BackgroundServer(app).start()
    try:
        yield server
    finally:
        server.stop()


def cli(*args: str, **kwargs: Any) -> Any:
    """Invoke the CLI in-process and assert the error contract every command keeps."""
    from zoattack.cli.main import app

    res = CliRunner().invoke(app, list(args), **kwargs)
    assert res.exit_code in (0, 2, 3), (args, res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, (args, res.output)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{args}: {type(res.exception).__name__}: {res.exception}")
    return res


@pytest.fixture(scope="session")
def zo_cli():
    return cli


class Corpus:
    """Counts the malformed-input cases the robustness tests run (printed at the end)."""

    cases: ClassVar[dict[str, int]] = {}

    @classmethod
    def add(cls, kind: str, n: int = 1) -> None:
        cls.cases[kind] = cls.cases.get(kind, 0) + n


@pytest.fixture(scope="session")
def corpus() -> type[Corpus]:
    return Corpus


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if Corpus.cases:
        total = sum(Corpus.cases.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(Corpus.cases.items()))
        terminalreporter.write_line(f"malformed-input corpus: {total} cases ({parts})")
