"""Tiny plans on the bundled small_cnn (6 images, 40 queries, chunks of 2) and a reference run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY = """
[defaults]
model = "small_cnn"
dataset = "fashion-mnist"
images = 6
budget = 40
chunk_size = 2
device = "cpu"
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny batches on a shared 2-core machine: one intra-op thread (tests/conftest.py)."""


def write_plan(folder: Path, body: str, *, name: str = "plan.toml", tiny: bool = True) -> Path:
    path = folder / name
    path.write_text((TINY if tiny else "") + textwrap.dedent(body))
    return path


@pytest.fixture(scope="session")
def tiny() -> str:
    """The [defaults] table of the tiny plans."""
    return TINY


@pytest.fixture
def plan_file(tmp_path: Path):
    """Write a plan (TINY defaults prepended) into tmp_path and return its path."""

    def make(body: str, **kwargs) -> Path:
        return write_plan(tmp_path, body, **kwargs)

    return make
