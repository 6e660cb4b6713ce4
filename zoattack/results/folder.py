"""The output folder of `zoattack run --out DIR`: written as the attack goes, resumable.

``run.json`` records the resolved settings when the run starts; ``per_image.csv`` gets each
chunk's rows appended (a :class:`~zoattack.results.log.RowLog`: flushed and fsynced) the moment
the chunk ends, and ``parts.jsonl`` the scored inputs every chunk spent, finished or cut short,
so a crash or a dead model loses at most the chunk in progress and a resumed run still counts
every part's queries; ``summary.json`` is written at the end, when the CSV is also rewritten in
index order. The adversarial examples go to ``adversarial.parts/`` shard by shard (each before
its rows) and are merged into ``adversarial.safetensors`` at the end (zoattack/adversarial.py).
A ``--universal`` run writes ``delta.safetensors`` and ``summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoattack.adversarial import ExampleLog
from zoattack.results.log import PartLog, RowLog, write_json
from zoattack.results.rows import CSV_FIELDS, FIELD_DEFAULTS

# Every file a run writes: a folder holding any of them holds a run.
RUN_FILES = (
    "run.json",
    "per_image.csv",
    "parts.jsonl",
    "summary.json",
    "examples.png",
    "success_vs_queries.png",
    "distance_vs_queries.png",
    "delta.safetensors",
    "adversarial.safetensors",
    "adversarial.parts",
)


def refuse_replacing(
    where: str | Path,
    what: str,
    *,
    resume: bool,
    overwrite: bool,
    can_resume: bool = True,
    resume_hint: str = "pass --resume to continue it (same settings), ",
) -> None:
    """The one rule of every command that writes where earlier work may lie (``run --out``,
    ``defend certify``, ``train``, ``defend train``): work already there is continued
    (``--resume``) or replaced (``--overwrite``), never silently rewritten.

    Call it only when ``where`` holds ``what``; raises the one-line ValueError naming the
    options, unless the user passed one of them. ``can_resume=False``: finished work that
    cannot be continued (trained weights), so only --overwrite is offered.
    """
    if resume and overwrite:
        raise ValueError(f"--resume continues {what} in {where}, --overwrite replaces it; pick one")
    if overwrite or (resume and can_resume):
        return
    options = (
        f"{resume_hint}--overwrite to replace it, or choose another --out"
        if can_resume
        else "pass --overwrite to replace it, or choose another --out"
    )
    raise ValueError(f"{where} already holds {what}; {options}")


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = RowLog(self.path / "per_image.csv", CSV_FIELDS, defaults=FIELD_DEFAULTS)
        self.parts = PartLog(self.path / "parts.jsonl")
        self.csv_path = self.rows.path
        self.meta_path = self.path / "run.json"
        self.summary_path = self.path / "summary.json"
        # adversarial.safetensors: shards while the run works, merged when it finishes
        self.examples = ExampleLog(self.path)

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def check_new(self, *, overwrite: bool) -> None:
        """A fresh run may not silently replace another one (finished or not)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file; name a folder for the run")
        if overwrite or not self.holds_run():
            return
        what = "a finished run" if self.status() == "finished" else "a run"
        refuse_replacing(self.path, what, resume=False, overwrite=overwrite)

    def recorded(self) -> dict[str, Any]:
        """run.json (ValueError when missing or not a run record)."""
        if not self.meta_path.is_file():
            raise ValueError(
                f"nothing to resume in {self.path}: no run.json there; run without "
                "--resume first (or point --out at the interrupted run)"
            )
        try:
            meta = json.loads(self.meta_path.read_text())
            if not isinstance(meta.get("spec"), dict):
                raise KeyError("spec")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{self.meta_path} is not a zoattack run record ({exc}); start a "
                "new run in another --out folder"
            ) from None
        return dict(meta)

    def status(self) -> str | None:
        try:
            return str(json.loads(self.meta_path.read_text()).get("status"))
        except (OSError, ValueError, AttributeError):
            return None

    def summary(self) -> dict[str, Any] | None:
        """summary.json's contents, or None when absent or unreadable."""
        try:
            data = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "summary" in data else None

    def clear(self) -> None:
        """Remove every file of a previous run (--overwrite)."""
        self.examples.clear()
        for name in RUN_FILES:
            if not (self.path / name).is_dir():
                (self.path / name).unlink(missing_ok=True)

    def start(
        self, spec: Mapping[str, Any], settings: Mapping[str, Any], *, resume: bool
    ) -> list[dict[str, Any]]:
        """Begin (or continue) the run; returns the rows already recorded."""
        self.path.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        if resume:
            rows = self.rows.read()
            self.rows.rewrite(rows)  # drops a torn last line left by a crash mid-write
        else:
            self.clear()
            self.rows.rewrite([])
        write_json(
            self.meta_path, {"spec": dict(spec), "settings": dict(settings), "status": "running"}
        )
        return rows

    def read_rows(self) -> list[dict[str, Any]]:
        """Complete rows of the CSV, first occurrence of each index kept."""
        return self.rows.read()

    def append(self, rows: list[dict[str, Any]]) -> None:
        self.rows.append(rows)

    def record_part(self, entry: Mapping[str, Any]) -> None:
        """Durably note the scored inputs one chunk (or an interrupted part of one) spent."""
        self.parts.record(entry)

    def scored_inputs(self) -> int:
        """Scored inputs of every part of the run so far, interrupted ones included."""
        return self.parts.total("scored_inputs")

    def finish(
        self,
        rows: Sequence[Mapping[str, Any]],
        summary: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> None:
        self.rows.rewrite(rows)
        write_json(self.summary_path, {"settings": dict(settings), "summary": dict(summary)})
        meta = json.loads(self.meta_path.read_text())
        meta["status"] = "finished"
        # Surrogate passes are local, never victim queries: recorded apart (a run with them).
        for key in ("surrogate_forwards", "surrogate_grads"):
            if key in summary:
                meta[key] = summary[key]
        write_json(self.meta_path, meta)

    def write_universal(
        self, delta: Any, summary: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> None:
        """A universal run: the perturbation (safetensors) and the summary."""
        from safetensors.torch import save_file

        self.path.mkdir(parents=True, exist_ok=True)
        save_file(
            {"delta": delta.detach().cpu().contiguous()}, str(self.path / "delta.safetensors")
        )
        write_json(self.summary_path, {"settings": dict(settings), "summary": dict(summary)})
