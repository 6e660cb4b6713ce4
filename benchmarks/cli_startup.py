#!/usr/bin/env python
"""How long the command line takes to answer --help and `list`, against Python's own start-up
and `import torch`, all measured in this run.

    python benchmarks/cli_startup.py [--repeat 5] [--tree PATH]

``--tree``: time the zoattack source tree at PATH instead of this one (e.g. an older checkout,
for a before/after pair on one machine). Each command runs ``--repeat`` times in a fresh
interpreter; the table gives the median and the best wall time, and the median's ratio to
``python -c pass`` and to ``import torch``. The target: under 0.5 s for --help, every
COMMAND --help and `list`, which is only possible when none of them imports torch.
"""

from __future__ import annotations

import argparse
import os
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


def wall(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr.decode()[-400:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tree", type=Path, default=ROOT, help="zoattack source tree to time")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(a.tree.resolve()), "COLUMNS": "100"}
    print(f"tree {a.tree.resolve()}; {a.repeat} runs each; python {sys.version.split()[0]}")
    results = {}
    for label, args in CASES:
        wall(args, env)  # warm the file cache
        times = [wall(args, env) for _ in range(a.repeat)]
        results[label] = (statistics.median(times), min(times))
    base, torch_s = results[CASES[0][0]][0], results[CASES[1][0]][0]
    print("| command | median s | best s | / python -c pass | / import torch |")
    print("|---|---:|---:|---:|---:|")
    for label, (med, best) in results.items():
        print(f"| `{label}` | {med:.2f} | {best:.2f} | {med / base:.1f} | {med / torch_s:.2f} |")


if __name__ == "__main__":
    main()
