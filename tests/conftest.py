"""Shared helpers for the ZO-core tests: smooth functions with known gradients (float64),
a wrapper that records every batch the black box hands to the function, and objectives.

Helpers are exposed as session-scoped fixtures (so hypothesis tests can use them too).
Every random draw in a helper comes from its own ``torch.Generator``; nothing here touches
torch's global RNG.
"""

from __future__ import annotations

import http.server
import math
import os
import re
import threading
from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from zoattack import BlackBox, FunctionObjective

F64 = torch.float64


class Linear:
    """``f(x) = c^T x + 1``: every finite difference is exact, so LIZO is exactly a projection."""

    def __init__(self, d: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d = d
        self.c = torch.randn(d, generator=g, dtype=F64)

    def __call__(self, x: Tensor) -> Tensor:
        return x.to(F64) @ self.c + 1.0

    def grad(self, x: Tensor) -> Tensor:
        return self.c.expand(x.shape[0], self.d).clone()


class Quadratic:
    """``f(x) = 0.5 x^T A x + b^T x`` with a dense SPD ``A`` (eigenvalues in [1, cond]).

    Its Gaussian- (or any symmetric-) smoothed gradient equals the true gradient ``A x + b``,
    and central differences along any direction are exact up to rounding.
    """

    def __init__(self, d: int, seed: int = 0, cond: float = 10.0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        eig = torch.logspace(0, math.log10(cond), d, dtype=F64)
        a = q @ torch.diag(eig) @ q.T
        self.d = d
        self.A = (a + a.T) / 2
        self.b = torch.randn(d, generator=g, dtype=F64)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(F64)
        return 0.5 * ((x @ self.A) * x).sum(-1) + x @ self.b

    def grad(self, x: Tensor) -> Tensor:
        return x.to(F64) @ self.A + self.b


class TanhMLP:
    """A fixed 2-layer tanh network ``R^d -> R`` in float64; gradient by autograd."""

    def __init__(self, d: int, hidden: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d = d
        self.w1 = torch.randn(hidden, d, generator=g, dtype=F64) / math.sqrt(d)
        self.b1 = torch.randn(hidden, generator=g, dtype=F64) * 0.1
        self.w2 = torch.randn(hidden, generator=g, dtype=F64) / math.sqrt(hidden)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.tanh(x.to(F64) @ self.w1.T + self.b1) @ self.w2

    def grad(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            xx = x.detach().to(F64).clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self(xx).sum(), xx)
        return g


class Recorder:
    """Wraps a batched function; keeps a copy of every batch the black box passes in."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn
        self.batches: list[Tensor] = []

    def __call__(self, x: Tensor) -> Tensor:
        self.batches.append(x.detach().clone())
        return self.fn(x)

    @property
    def calls(self) -> int:
        return len(self.batches)

    def points(self, since: int = 0) -> Tensor:
        """All points seen from call ``since`` on, concatenated ``(M, *shape)``."""
        return torch.cat(self.batches[since:]) if len(self.batches) > since else torch.zeros(0)


def objective_for(fn: Callable[[Tensor], Tensor], **kwargs) -> tuple[FunctionObjective, BlackBox]:
    """A scores black box (no bounds) around ``fn`` and the objective over it."""
    kwargs.setdefault("bounds", None)
    bb = BlackBox(fn, output="scores", **kwargs)
    return FunctionObjective(bb), bb


def points(d: int, n: int = 1, seed: int = 1, scale: float = 0.5, dtype=F64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=F64)).to(dtype)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.flatten(1).to(F64), b.flatten(1).to(F64)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


class Helpers:
    Linear = Linear
    Quadratic = Quadratic
    TanhMLP = TanhMLP
    Recorder = Recorder
    objective_for = staticmethod(objective_for)
    points = staticmethod(points)
    cosine = staticmethod(cosine)


class _LoopbackFiles(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (path -> bytes) on 127.0.0.1; a path in ``truncate`` sends half its
    body after promising all of it (a cut transfer); ``hits`` lists the paths asked for."""

    files: ClassVar[dict[str, bytes]] = {}
    truncate: ClassVar[set[str]] = set()
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def loopback_files():
    """A loopback HTTP file server for download tests: yields (base URL, handler class)."""
    h = _LoopbackFiles
    h.files, h.truncate, h.hits = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", h
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def bench_overhead():
    """benchmarks/overhead.py (its --count machinery), loaded by path under fixed names:
    putting benchmarks/ on sys.path would shadow other imports."""
    import importlib.util
    import sys
    from pathlib import Path

    module = sys.modules.get("bench_overhead")
    if module is None:
        # overhead.py imports its parts by these names, as the script does.
        for name in ("_overhead_count", "_overhead_report", "bench_overhead"):
            file = "overhead.py" if name == "bench_overhead" else f"{name}.py"
            path = Path(__file__).resolve().parents[1] / "benchmarks" / file
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def zo() -> type[Helpers]:
    """The helper namespace: ``zo.Quadratic(d)``, ``zo.objective_for(fn)``, ``zo.Recorder`` ..."""
    return Helpers


@pytest.fixture(scope="module")
def one_thread():
    """Run on one intra-op thread: these tensors are tiny, and on a busy 2-core machine
    thread hand-offs cost far more than the arithmetic. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_victim():
    """A small MLP trained on scikit-learn digits (deterministic, no global RNG), and 40 held-
    out images ``(40, 1, 8, 8)`` with labels: the shared victim of the attack tests."""
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    for p in model.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:1200]), y[:1200]).backward()
        opt.step()
    model.eval()
    return model, x[1200:1240], y[1200:1240]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is visible (run them with ``-m gpu`` on a
    GPU machine); ``slow`` ones are deselected by ``-m "not slow"`` in pyproject's addopts."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------- CI: no quiet skips

# `make test` installs these (the ray/models extras, Debian's dataset-fashion-mnist), so under
# CI a test skipped for want of one of them means the set-up broke: report it as a failure.
_CI_REQUIRED = re.compile(
    r"\b(timm|robustbench|pyautoattack|autoattack|ray)\b|dataset-fashion-mnist", re.IGNORECASE
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _in_ci()):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    if _CI_REQUIRED.search(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI, but `make test` installs what this test needs: {reason}"
        )
