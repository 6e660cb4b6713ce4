"""`zoattack run` as a library call: :func:`run_attack_job` takes a spec and an output folder
and returns the summary; the CLI only parses options and prints what comes back.

Output folder rules (the promise "nothing already computed is lost"):

* a folder that holds a run (finished or not) is never silently replaced: a new run there
  needs ``overwrite=True``; ``resume=True`` continues it;
* ``resume=True`` needs the settings of the recorded run. Both sides are compared resolved
  (defaults filled in, the estimator's own samples/mu/difference included), so the exact
  command that started a run resumes it; only device and max_batch may differ;
* resuming a run that is already complete changes nothing and returns its stored summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoattack.errors import ZOAttackError
from zoattack.jobs.attack import (
    AttackSpec,
    JobInterrupted,
    effective_settings,
    eps_source,
    is_score_based,
    merge_results,
    prepare,
    run_job,
    spec_label,
)
from zoattack.results.folder import RunFolder
from zoattack.results.rows import summarize_rows
from zoattack.results.tables import DECISION_RUN_KEYS, RUN_KEYS

# Settings that change where or how fast an attack runs, not its results.
RESUME_MAY_DIFFER = ("device", "max_batch")


@dataclass
class RunReport:
    """What a run returns: its title, settings, summary, the keys a table shows, the files it
    wrote; ``already_complete`` when a resumed run had nothing left to do."""

    title: str
    settings: dict[str, Any]
    summary: dict[str, Any]
    keys: tuple[str, ...]
    folder: Path | None = None
    written: list[str] = field(default_factory=list)
    already_complete: bool = False
    notes: list[str] = field(default_factory=list)


def _title(spec: AttackSpec) -> str:
    kind = " (hard-label)" if not is_score_based(spec) else ""
    return (
        f"{spec_label(spec)}{kind} vs {spec.model} on {spec.dataset}: {spec.norm} "
        f"eps={_eps_words(spec)}, budget {spec.budget:,}"
    )


def _eps_words(spec: AttackSpec) -> str:
    """``8/255 (cifar10 convention)``: the radius and where it came from."""
    from zoattack.data.registry import eps_text

    assert spec.eps is not None
    eps = float(spec.eps)
    return f"{eps_text(eps)} ({eps_source(eps, spec.dataset, spec.norm)})"


def _keys(spec: AttackSpec) -> tuple[str, ...]:
    return DECISION_RUN_KEYS if not is_score_based(spec) else RUN_KEYS


def resume_differences(recorded: Mapping[str, Any], spec: AttackSpec) -> list[str]:
    """``"key=theirs there, mine now"`` for every result-changing setting in which the
    recorded run's spec and ``spec`` (resolved) differ; both are resolved first."""
    try:
        theirs = effective_settings(AttackSpec.from_dict(recorded).resolved())
    except (ValueError, TypeError, ZOAttackError) as exc:
        raise ValueError(
            f"the recorded settings no longer describe a valid attack ({exc}); start a new "
            "run in another --out folder"
        ) from None
    mine = effective_settings(spec.resolved())
    return [
        f"{k}={theirs.get(k)!r} there, {mine[k]!r} now"
        for k in mine
        if k not in RESUME_MAY_DIFFER and theirs.get(k) != mine[k]
    ]


def check_resume(folder: RunFolder, spec: AttackSpec) -> dict[str, Any]:
    """The folder's run record, after checking it is the same attack as ``spec``."""
    meta = folder.recorded()
    diff = resume_differences(meta["spec"], spec)
    if diff:
        raise ValueError(
            f"--resume needs the settings of the run in {folder.path}: {', '.join(diff[:4])}; "
            "repeat its options (see its run.json) or drop --resume"
        )
    return meta


def _stored_complete(folder: RunFolder, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored summary document of a finished run whose rows are all on disk, else None."""
    if meta.get("status") != "finished":
        return None
    stored = folder.summary()
    images = (meta.get("settings") or {}).get("images")
    if stored is None or not isinstance(images, int):
        return None
    have = {int(r["index"]) for r in folder.read_rows()}
    indices = (meta.get("spec") or {}).get("indices")
    want = set(AttackSpec(indices=indices).image_indices()) if indices else set(range(images))
    return stored if have >= want else None


def check_options(
    *,
    out: Path | None,
    resume: bool,
    overwrite: bool,
    universal: bool,
    save_images: bool,
) -> None:
    """Combinations of output options that cannot work (one clear ValueError each)."""
    if save_images and out is None:
        raise ValueError("--save-images needs --out DIR to write the PNG files into")
    if resume and out is None:
        raise ValueError("--resume needs --out DIR, the folder of the run to continue")
    if overwrite and out is None:
        raise ValueError("--overwrite needs --out DIR, the folder to replace")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it; pick one")
    if resume and universal:
        raise ValueError(
            "--resume continues per-image attacks; a --universal run has one "
            "perturbation and restarts from scratch (--overwrite)"
        )


def run_attack_job(
    spec: AttackSpec,
    *,
    out: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    universal: bool = False,
    save_images: bool = False,
    plot_format: str = "png",
    model_options: Mapping[str, Any] | None = None,
    model: torch.nn.Module | None = None,
    on_start: Callable[[str, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
    on_live: Callable[[int, dict[str, int]], None] | None = None,
) -> RunReport:
    """Run one attack job (per-image or ``universal``), writing into ``out`` if given.

    ``model`` replaces the one ``spec`` names (its weights are then the caller's business).
    ``on_start(label, total_queries)`` is called once the model is loaded, ``on_progress``
    with the queries spent so far, ``on_rows`` with each chunk's new rows (after they are on
    disk), ``on_live`` with a chunk's counts mid-attack (:func:`run_chunk`). Raises
    ValueError for bad settings or a refused folder (nothing is loaded or written then) and
    :class:`JobInterrupted` when the model fails or the user interrupts (finished images are
    on disk; ``resume=True`` continues).
    """
    check_options(
        out=out, resume=resume, overwrite=overwrite, universal=universal, save_images=save_images
    )
    from zoattack.results.figures import check_plot_format

    ext = check_plot_format(plot_format)  # before any work: a typo costs nothing
    spec = spec.resolved()
    if universal and spec.attack is not None:
        raise ValueError(
            "--universal runs score-based rules; a hard-label --attack finds one "
            "perturbation per image (drop --universal)"
        )
    if spec.prior is not None and not is_score_based(spec):
        raise ValueError(
            "--prior biases gradient estimates of score-based rules; a hard-label --attack "
            "does not use it (drop --prior)"
        )
    folder = RunFolder(out) if out is not None else None
    if folder is not None:  # before loading anything: fail fast, touch nothing
        if resume:
            meta = check_resume(folder, spec)
            stored = _stored_complete(folder, meta)
            if stored is not None:
                return RunReport(
                    title=_title(spec),
                    settings=dict(stored.get("settings") or {}),
                    summary=dict(stored["summary"]),
                    keys=_keys(spec),
                    folder=folder.path,
                    already_complete=True,
                )
        else:
            folder.check_new(overwrite=overwrite)
    remote_opts = dict(model_options or {})
    # --download/--sha256 reach published weights of any model; the rest are remote: options.
    if set(remote_opts) - {"download", "sha256"} and not spec.model.startswith("remote:"):
        raise ValueError("--token/--timeout/--retries/--max-rps apply to --model remote:URL only")
    job = prepare(spec, model=model, model_options=remote_opts)
    settings = job.settings()
    if universal:
        return _universal(job, settings, folder)

    done_rows = folder.start(spec.as_dict(), settings, resume=resume) if folder else []
    done = {int(r["index"]) for r in done_rows}
    todo = sum(1 for i in spec.image_indices() if i not in done)
    if on_start is not None:
        on_start(job.label, spec.budget * todo)
    if on_rows is not None and done_rows:  # a resumed run's finished images count as done
        on_rows(list(done_rows))
    t0 = time.perf_counter()
    on_examples = None
    if folder is not None:
        from zoattack.adversarial import example_tensors

        meta = example_metadata(job.spec, settings)
        examples = folder.examples

        def on_examples(result: Any, keep: torch.Tensor, rows: list[dict[str, Any]]) -> None:
            tensors = example_tensors(result, [int(r["index"]) for r in rows], keep)
            examples.append(tensors, meta)

    try:
        outcome = run_job(
            job,
            done=done,
            on_rows=_tee(folder.append if folder is not None else None, on_rows),
            on_part=folder.record_part if folder is not None else None,
            progress=on_progress,
            on_examples=on_examples,
            on_live=on_live,
        )
    except JobInterrupted as exc:
        if folder is None:
            raise
        where = (
            f"; {len(done) + len(exc.rows)} finished images are in {folder.csv_path}, "
            "rerun with --resume to continue"
        )
        raise JobInterrupted(str(exc) + where, exc.rows, exc.scored_inputs) from exc.__cause__
    wall = time.perf_counter() - t0
    rows = sorted([*done_rows, *outcome.rows], key=lambda r: int(r["index"]))
    base = summarize_rows(
        rows,
        wall_seconds=wall,
        scored_inputs=outcome.scored_inputs,
        decision_norm=spec.norm if not is_score_based(spec) else None,
    )
    summary: dict[str, Any] = {}
    for key, value in base.items():  # this session's rate; every part's queries in the total
        if key == "scored_inputs":
            summary[key] = folder.scored_inputs() if folder is not None else value
            summary["scored_inputs_this_session"] = outcome.scored_inputs
        else:
            summary[key] = value
    if resume:
        summary["resumed_with_images"] = len(done)
    if spec.surrogates is not None:
        summary["counting_rule"] = settings["counting_rule"]
    for key in job.surrogate_counts():  # local passes, never victim queries: apart
        summary[key] = (
            folder.parts.total(key) if folder is not None else outcome.surrogate.get(key, 0)
        )
    report = RunReport(title=_title(spec), settings=settings, summary=summary, keys=_keys(spec))
    if getattr(job.surrogate, "white_box", False):
        report.notes.append(
            "a surrogate is the victim itself (same name and weights): this is a white-box "
            "setting, not a black-box attack (the method line says so)"
        )
    if folder is not None:
        kept = folder.examples.finish()
        folder.finish(rows, summary, settings)
        report.folder = folder.path
        report.written = ["per_image.csv", "summary.json"]
        if kept:
            report.written.append("adversarial.safetensors")
        if kept < len(rows):  # images a version before adversarial.safetensors finished
            report.notes.append(
                f"adversarial.safetensors holds {kept} of {len(rows)} images: the others "
                "were finished by an earlier zoattack that did not keep adversarial examples"
            )
        if save_images and outcome.chunks:
            from zoattack.results.figures import save_image_grid, save_success_curve

            merged = merge_results([c.result for c in outcome.chunks])
            xs = torch.cat(
                [job.images[c.start : c.start + len(c.result.label)] for c in outcome.chunks]
            )
            save_image_grid(
                folder.path / f"examples.{ext}",
                xs,
                merged,
                classes=job.classes,
                title=_title(spec),
            )
            save_success_curve(
                folder.path / f"success_vs_queries.{ext}",
                merged,
                spec.budget,
                label=spec_label(spec) if spec.attack is not None else str(spec.optimizer),
                title=_title(spec),
            )
            report.written += [f"examples.{ext}", f"success_vs_queries.{ext}"]
        if not is_score_based(spec) and outcome.chunks:
            # The distance curve is what a decision attack optimises: written with every --out.
            from zoattack.results.figures import save_distance_curve

            assert spec.eps is not None
            save_distance_curve(
                folder.path / f"distance_vs_queries.{ext}",
                merge_results([c.result for c in outcome.chunks]),
                spec.budget,
                norm=spec.norm,
                eps=spec.eps,
                label=spec_label(spec),
                title=_title(spec),
            )
            report.written.append(f"distance_vs_queries.{ext}")
    return report


def example_metadata(spec: AttackSpec, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What adversarial.safetensors says about the run that made it (for `zoattack verify`)."""
    keys = ("model", "dataset", "data_dir", "weights", "model_dir", "threat_model")
    return {
        **{k: settings.get(k) for k in keys},
        "norm": spec.norm,
        "eps": spec.eps,
        "budget": spec.budget,
        "attack": spec_label(spec),
        "labels_only": spec.labels_only or None,
        "method": settings.get("method"),
        "counting_rule": settings.get("counting_rule"),
    }


def _tee(*fns: Callable[[list[dict[str, Any]]], None] | None) -> Any:
    """One rows callback calling each of ``fns`` in order (None when there are none)."""
    live = [f for f in fns if f is not None]
    if not live:
        return None

    def call(rows: list[dict[str, Any]]) -> None:
        for f in live:
            f(rows)

    return call


def _universal(job: Any, settings: dict[str, Any], folder: RunFolder | None) -> RunReport:
    from zoattack.jobs.universal import run_universal_job

    outcome = run_universal_job(job)
    spec = job.spec
    report = RunReport(
        title=(
            f"universal {settings['optimizer']} on {settings['model']}: {spec.norm} "
            f"eps={_eps_words(spec)}, budget {spec.budget:,} per image"
        ),
        settings=settings,
        summary=outcome.summary,
        keys=tuple(k for k in outcome.summary if k != "counting_rule"),
    )
    if folder is not None:
        folder.clear()  # a refused folder never gets here: it is empty or --overwrite
        folder.write_universal(outcome.delta, outcome.summary, settings)
        report.folder = folder.path
        report.written = ["delta.safetensors", "summary.json"]
    return report
