"""Reliability tests: real `zoattack` processes killed with SIGKILL, and a loopback load test.

Tests marked ``slow`` (the exhaustive rule x norm sweep) run only when asked for, with
``-m slow`` (or any ``-m`` expression naming slow), so the default suite stays within budget.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="slow reliability sweep; run with -m slow")
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if "slow" in item.keywords and str(item.fspath).startswith(here):
            item.add_marker(skip)
