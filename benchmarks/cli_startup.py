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


def wall(args: list[str], env: dict[str, str], tree: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run in a fresh interpreter, started in ``tree``
    (``python -m`` puts the current folder first on sys.path: it must be the timed tree)."""
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
        raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr.decode()[-400:]}")
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
    results = {}
    for label, args in CASES:
        wall(args, env, tree)  # warm the file cache
        runs = [wall(args, env, tree) for _ in range(a.repeat)]
        walls = [w for w, _ in runs]
        cpus = [c for _, c in runs]
        results[label] = (statistics.median(walls), min(walls), statistics.median(cpus))
    base, torch_s = results[CASES[0][0]][0], results[CASES[1][0]][0]
    print("| command | median s | best s | / python -c pass | / import torch | CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (med, best, cpu) in results.items():
        print(
            f"| `{label}` | {med:.2f} | {best:.2f} | {med / base:.1f} | {med / torch_s:.2f} "
            f"| {cpu:.2f} |"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
