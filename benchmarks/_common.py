"""Plumbing every benchmark shares: run metadata, timing, model-call meters, tables, output files.

The benchmarks measure zoattack; they do not re-implement it. Threat-model checks come from
:mod:`zoattack.norms`, rule defaults from the registry entries (``norm_defaults``), rules from
:func:`zoattack.optim.create_optimizer`. What stays here is measurement: how long, how many
scored inputs, on which machine and software, written where.

Import from a benchmark script as ``from _common import ...`` (scripts run as
``python benchmarks/NAME.py``, so their folder is on ``sys.path``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoattack import __version__ as ZO_VERSION

# Peers installed apart from the venv (`make peers`: torchattacks, whose declared requirements
# clash with the venv's); appended, so the venv's own packages win.
PEERS = Path(__file__).resolve().parents[1] / ".venv" / "peers"
if PEERS.is_dir() and str(PEERS) not in sys.path:
    sys.path.append(str(PEERS))

# --------------------------------------------------------------------------- run metadata


def log(msg: str = "", *, stderr: bool = False) -> None:
    """One progress line, flushed at once (benchmarks run for minutes; buffered output lies)."""
    print(msg, file=sys.stderr if stderr else sys.stdout, flush=True)


def command_line() -> str:
    """The command that started this run, shell-quoted, so a reader can re-run it."""
    return shlex.join([sys.executable, *sys.argv])


def installed(module: str) -> str | None:
    """Version of an optional peer (import name ``module``), or None when it is absent."""
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "?")


def versions(*peers: str) -> dict[str, str | None]:
    """python, torch, zoattack and each optional peer (None: not installed)."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zoattack": ZO_VERSION,
    }
    for name in peers:
        out[{"art": "adversarial-robustness-toolbox"}.get(name, name)] = installed(name)
    return out


def load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """CPU, core count, torch threads and load: contention explains most timing noise."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
    }


def metadata(**extra: Any) -> dict[str, Any]:
    """Provenance of one run: command, UTC date, versions, machine, plus ``extra``."""
    return {
        "command": sys.argv,
        "command_line": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": machine(),
        **extra,
    }


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads (None or 0: leave torch's choice). Small per-step tensors on
    a loaded machine run much slower with several OpenMP threads, so benchmarks default to 1."""
    if threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- timing


def timed(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    reduce: Callable[[list[float]], float] = statistics.median,
) -> float:
    """Wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones, reduced by
    ``reduce`` (median by default; ``min`` estimates the unloaded cost under interference)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return reduce(times)


class Meter(nn.Module):
    """Transparent model wrapper: counts calls and scored rows and times the model's forward.

    ``rate()`` is the model's own throughput on exactly the calls the attack made (rows per
    second spent inside ``forward``), measured during the attack so machine load hits the
    attack and the model alike.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.eval()
        self.reset()

    def reset(self) -> None:
        self.calls, self.rows, self.model_seconds = 0, 0, 0.0
        self.batches: dict[int, int] = {}

    def forward(self, x: Tensor) -> Tensor:
        t = time.perf_counter()
        out = self.net(x)
        self.model_seconds += time.perf_counter() - t
        self.calls += 1
        self.rows += int(x.shape[0])
        self.batches[int(x.shape[0])] = self.batches.get(int(x.shape[0]), 0) + 1
        return out

    @property
    def mean_batch(self) -> float:
        return self.rows / max(self.calls, 1)

    def rate(self) -> float:
        """Scored rows per second of model time."""
        return self.rows / max(self.model_seconds, 1e-12)


class RawProfile:
    """Seconds per bare batched forward call of a victim (inference mode, same threads), on a
    grid of batch sizes 1, 2, 4, ..., measured lazily; other sizes interpolate linearly."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...], seconds: float = 0.25) -> None:
        self.net, self.shape, self.seconds = net, shape, seconds
        self.per_call: dict[int, float] = {}

    def _measure(self, b: int) -> float:
        if b not in self.per_call:
            xb = torch.rand(b, *self.shape, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                self.net(xb)
                calls, t0 = 0, time.perf_counter()
                while calls < 2 or time.perf_counter() - t0 < self.seconds:
                    self.net(xb)
                    calls += 1
                self.per_call[b] = (time.perf_counter() - t0) / calls
        return self.per_call[b]

    def call_seconds(self, b: int) -> float:
        lo = 1 << (max(b, 1).bit_length() - 1)
        if lo == b:
            return self._measure(b)
        hi = lo * 2
        t_lo, t_hi = self._measure(lo), self._measure(hi)
        return t_lo + (t_hi - t_lo) * (b - lo) / (hi - lo)

    def seconds_for(self, batches: Mapping[int, int]) -> float:
        """Bare model time for the same sequence of batch sizes (``{size: calls}``)."""
        return sum(n * self.call_seconds(b) for b, n in batches.items())

    def rate(self, b: int) -> float:
        """Bare rows per second at batch size ``b``."""
        return b / self.call_seconds(b)


# --------------------------------------------------------------------------- tables and files


def fmt(v: Any, spec: str = ".3g") -> str:
    """A table cell: ``-`` for missing values, ``spec`` for floats."""
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of an aligned Markdown table (readable in a terminal and pasteable into docs)."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("| " + " | ".join(v.ljust(widths[i]) for i, v in enumerate(c)) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def out_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: Any, indent: int = 2) -> Path:
    """JSON with ``str`` for anything JSON cannot hold (paths, dtypes)."""
    path.write_text(json.dumps(payload, indent=indent, default=str))
    return path


def write_csv(
    path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None
) -> Path:
    """Dict rows as CSV; the columns are ``fields`` or every key in first-seen order."""
    if fields is None:
        seen: list[str] = []
        for r in rows:
            seen += [k for k in r if k not in seen]
        fields = seen
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def held_out(net: nn.Module, start: int, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` Fashion-MNIST test images from index ``start`` that ``net`` classifies
    correctly: the held-out images tuning runs on (never the benchmarks' first images)."""
    from zoattack.data import load_dataset

    ds = load_dataset("fashion-mnist", split="test", limit=start + 4 * n)
    x, y = ds.images[start:], ds.labels[start:]
    with torch.no_grad():
        ok = (net(x).argmax(1) == y).nonzero().flatten()[:n]
    return x[ok], y[ok]
