"""What `make test` installs is really there under CI, and a skip for want of it fails there."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoattack.data import mnist as mnist_mod

ROOT = Path(__file__).resolve().parents[1]
_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.mark.skipif(not _CI, reason="checks the CI set-up (set CI=1)")
@pytest.mark.parametrize("module", ["timm", "robustbench", "ray"])
def test_ci_has_the_named_libraries(module):
    if module == "robustbench":
        from zoattack.models.adapters import import_robustbench

        import_robustbench()  # the autoattack alias and pkg_resources must work
    else:
        importlib.import_module(module)


@pytest.mark.skipif(not _CI, reason="checks the CI set-up (set CI=1)")
def test_ci_has_debian_fashion_mnist():
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (mnist_mod.DEBIAN_FASHION_DIR / name).is_file(), "run `make data`"


def test_torch_pins_survive_the_extras():
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == "2.14.1"
    assert torchvision.__version__.split("+")[0] == "0.29.1"
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_probe_skip():
    """Skips like a test whose library is missing; run only by the test below."""
    if not os.environ.get("ZOATTACK_SKIP_PROBE"):
        return
    pytest.skip("could not import 'timm': No module named 'timm'")


@pytest.mark.parametrize("ci", ["1", ""])
def test_dependency_skip_fails_under_ci(ci):
    env = {**os.environ, "CI": ci, "ZOATTACK_SKIP_PROBE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{Path(__file__)}::test_probe_skip",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if ci:
        assert proc.returncode == 1, proc.stdout[-2000:]
        assert "make test" in proc.stdout and "1 failed" in proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout[-2000:]
        assert "1 skipped" in proc.stdout
