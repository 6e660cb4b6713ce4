#!/usr/bin/env python
"""How long the command line takes to answer --help and `list`, against Python's own start-up
and `import torch`, all measured in this run.

    python benchmarks/cli_startup.py [--repeat 5] [--tree PATH]

``--tree``: time the zoattack source tree at PATH instead of this one (e.g. an older checkout,
for a before/after pair on one machine). Each command runs ``--repeat`` times in a fresh
interpreter; the table gives the median and the best wall time, and the median's ratio to
``python -c pass`` and to ``import torch``, plus the median CPU time (user + system) of the
child process, which a busy machine inflates less than wall time. The target: under 0.5 s for
--help, every COMMAND --help and `list`, which is only possible when none of them imports torch.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("python -c pass", ["-c", "pass"]),
    ("python -c 'import torch'", ["-c", "import torch"]),
    ("zoattack --help", ["-m", "zoattack", "--help"]),
    ("zoattack --version", ["-m", "zoattack", "--version"]),
    ("zoattack run --help", ["-m", "zoattack", "run", "--help"]),
    ("zoattack defend train --help", ["-m", "zoattack", "defend", "train", "--help"]),
    ("zoattack list", ["-m", "zoattack", "list"]),
    ("zoattack list models", ["-m", "zoattack", "list", "models"]),
    ("zoattack list optimizers --defaults", ["-m", "zoattack", "list", "optimizers", "--defaults"]),
]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(args: list[str], env: dict[str, str], tree: Path) -> tuple[float, float] | int:
    """(wall seconds, CPU seconds) of one run in a fresh interpreter, started in ``tree``
    (``python -m`` puts the current folder first on sys.path: it must be the timed tree); the
    exit code instead when the command fails (an older tree may lack it, e.g. bare `list`)."""
    cpu0, start = _child_cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    took, cpu = time.perf_counter() - start, _child_cpu() - cpu0
    if done.returncode != 0:
        return done.returncode
    return took, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tree", type=Path, default=ROOT, help="zoattack source tree to time")
    a = ap.parse_args()
    tree = a.tree.resolve()
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "100"}
    print(
        f"tree {tree}; {a.repeat} runs each; python {sys.version.split()[0]}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    results: dict[str, tuple[float, float, float] | int] = {}
    for label, args in CASES:
        first = wall(args, env, tree)  # also warms the file cache
        if isinstance(first, int):
            results[label] = first
            continue
        runs = [wall(args, env, tree) for _ in range(a.repeat)]
        walls = [r[0] for r in runs if not isinstance(r, int)]
        cpus = [r[1] for r in runs if not isinstance(r, int)]
        results[label] = (statistics.median(walls), min(walls), statistics.median(cpus))
    base, torch_s = (results[CASES[i][0]][0] for i in (0, 1))  # type: ignore[index]
    print("| command | median s | best s | / python -c pass | / import torch | CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, res in results.items():
        if isinstance(res, int):
            print(f"| `{label}` | fails (exit {res}) | | | | |")
            continue
        med, best, cpu = res
        print(
            f"| `{label}` | {med:.2f} | {best:.2f} | {med / base:.1f} | {med / torch_s:.2f} "
            f"| {cpu:.2f} |"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
