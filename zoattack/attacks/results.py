"""The output folder of `zoattack run --out DIR`: written as the attack goes, resumable.

``run.json`` records the resolved settings when the run starts; ``per_image.csv`` gets each
chunk's rows appended (flushed and fsynced) the moment the chunk ends, so a crash or a dead
model loses at most the chunk in progress; ``summary.json`` is written at the end, when the CSV
is also rewritten in index order.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoattack.jobs.attack import CSV_FIELDS, AttackSpec

# Settings that change where or how fast an attack runs, not its results.
_RESUME_MAY_DIFFER = ("device", "max_batch")


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.csv_path = self.path / "per_image.csv"
        self.meta_path = self.path / "run.json"

    def check_start(self, spec: AttackSpec, *, resume: bool) -> None:
        """With ``resume``: the folder must hold a run with the same settings."""
        if not resume:
            return
        if not self.meta_path.is_file():
            raise ValueError(
                f"nothing to resume in {self.path}: no run.json there; run without "
                "--resume first (or point --out at the interrupted run)"
            )
        try:
            recorded = json.loads(self.meta_path.read_text())["spec"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{self.meta_path} is not a zoattack run record ({exc}); start a "
                "new run in another --out folder"
            ) from None
        mine = spec.as_dict()
        diff = [k for k in mine if k not in _RESUME_MAY_DIFFER and recorded.get(k) != mine[k]]
        if diff:
            shown = ", ".join(f"{k}={recorded.get(k)!r} there, {mine[k]!r} now" for k in diff[:4])
            raise ValueError(
                f"--resume needs the settings of the run in {self.path}: {shown}; "
                "repeat its options (see its run.json) or drop --resume"
            )

    def start(self, settings: Mapping[str, Any], *, resume: bool) -> list[dict[str, str]]:
        """Begin (or continue) the run; returns the rows already recorded."""
        self.path.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume:
            rows = self.read_rows()
            self._rewrite(rows)  # drops a torn last line left by a crash mid-write
        else:
            for stale in ("summary.json", "examples.png", "success_vs_queries.png"):
                (self.path / stale).unlink(missing_ok=True)
            self._rewrite([])
        spec = {k: settings[k] for k in AttackSpec.field_types()}
        self.meta_path.write_text(
            json.dumps(
                {"spec": spec, "settings": dict(settings), "status": "running"},
                indent=2,
                default=str,
            )
        )
        return rows

    def read_rows(self) -> list[dict[str, str]]:
        """Complete rows of the CSV, first occurrence of each index kept."""
        if not self.csv_path.is_file():
            return []
        rows: dict[int, dict[str, str]] = {}
        with self.csv_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if any(row.get(k) in (None, "") for k in CSV_FIELDS):
                    continue
                try:
                    idx = int(row["index"])
                except ValueError:
                    continue
                rows.setdefault(idx, {k: row[k] for k in CSV_FIELDS})
        return [rows[i] for i in sorted(rows)]

    def append(self, rows: list[dict[str, Any]]) -> None:
        with self.csv_path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())

    def finish(
        self, rows: list[Mapping[str, Any]], summary: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> None:
        self._rewrite(rows)
        (self.path / "summary.json").write_text(
            json.dumps(
                {"settings": dict(settings), "summary": dict(summary)}, indent=2, default=str
            )
        )
        meta = json.loads(self.meta_path.read_text())
        meta["status"] = "finished"
        self.meta_path.write_text(json.dumps(meta, indent=2, default=str))

    def _rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows({k: r[k] for k in CSV_FIELDS} for r in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.csv_path)
