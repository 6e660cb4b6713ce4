"""Crash-safe, append-only logs: the one way results reach disk while work is running.

:class:`RowLog` is a CSV file of rows keyed by an integer ``index`` column (`zoattack run`'s
per_image.csv, `defend certify`'s certify.csv); :class:`PartLog` a JSON-lines file of work
records (the scored inputs each finished or interrupted piece of work spent). Every append is
flushed and fsynced before it returns, so a crash, a kill or a dead model loses at most the
piece of work in progress; a torn last line left by a crash mid-write is ignored when read.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _sync(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


class RowLog:
    """A CSV file of rows with the columns ``fields``, one per ``index``.

    ``parse`` turns a complete text row into typed values (default: keep the strings); a row
    it rejects (ValueError) or one with an empty field is treated as torn and dropped.
    """

    def __init__(
        self,
        path: str | Path,
        fields: Sequence[str],
        parse: Callable[[Mapping[str, str]], dict[str, Any]] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)
        self.parse = parse
        self.defaults = dict(defaults or {})

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> list[dict[str, Any]]:
        """Complete rows in index order, the first occurrence of each index kept."""
        if not self.path.is_file():
            return []
        rows: dict[int, dict[str, Any]] = {}
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            # A column this version added is absent from an older file's header: its rows
            # take the column's default instead of being dropped as torn.
            absent = {
                k: self.defaults[k]
                for k in self.fields
                if k in self.defaults and k not in (reader.fieldnames or ())
            }
            for raw in reader:
                if absent:
                    raw = {**raw, **{k: str(v) for k, v in absent.items()}}
                if any(raw.get(k) in (None, "") for k in self.fields):
                    continue
                try:
                    row = (
                        self.parse(raw)
                        if self.parse is not None
                        else {k: raw[k] for k in self.fields}
                    )
                    idx = int(raw["index"])
                except (ValueError, TypeError):
                    continue
                rows.setdefault(idx, row)
        return [rows[i] for i in sorted(rows)]

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add rows at the end (the header first when the file is new), durably."""
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
            _sync(fh)

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file atomically by ``rows`` (a crash leaves the old or the new file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            _sync(fh)
        os.replace(tmp, self.path)


class PartLog:
    """JSON lines, one record per piece of work (a chunk done, a part interrupted)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, entry: Mapping[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(dict(entry), default=str) + "\n")
            _sync(fh)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def total(self, key: str) -> int:
        return sum(int(e.get(key) or 0) for e in self.entries())


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(dict(data), indent=2, default=str) + "\n")
        fh.flush()
        # Durable before the rename: a crash leaves the old file or the new one, never an
        # empty one that a later --resume would have to refuse.
        os.fsync(fh.fileno())
    os.replace(tmp, path)
