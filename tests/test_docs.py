"""The published docs (README.md and docs/ outside notes/) speak to users: no development
branch names or issue numbers, which mean nothing to a reader of the site."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if "notes" not in p.relative_to(ROOT / "docs").parts
)
INTERNAL = re.compile(r"\b(branch [a-z]+\d+\w*|issue #?\d+)\b", re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_published_pages_name_no_development_branches_or_issues(page):
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {m.group(0)}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for m in INTERNAL.finditer(line)
    ]
    assert not hits, hits
