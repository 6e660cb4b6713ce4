"""`zoattack run`: a query-limited black-box attack on a real model, with an honest ledger."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoattack.attacks.results import RunFolder
from zoattack.blackbox import BlackBox
from zoattack.cli._common import (
    DataDirOption,
    ModelDirOption,
    WeightsOption,
    err,
    guarded,
    out,
)
from zoattack.jobs.attack import (
    DEFAULT_CHUNK,
    AttackSpec,
    JobInterrupted,
    PreparedJob,
    merge_results,
    prepare,
    run_job,
    summarize_rows,
)
from zoattack.optim.base import ZORule
from zoattack.seeding import make_generator, seed_everything

P_MODEL, P_THREAT, P_OPT, P_OUT = "Model and data", "Threat model", "Optimizer", "Output"
EXIT_INTERRUPTED = 3
# Defaults live in each rule's registry entry (zoattack list optimizers --defaults).
__all__ = ["run_command"]


@guarded
def run_command(
    model: Annotated[
        str,
        typer.Option(
            help="Zoo name (resnet20, small_cnn) or torchvision:/timm:/robustbench:NAME.",
            rich_help_panel=P_MODEL,
        ),
    ] = "small_cnn",
    dataset: Annotated[
        str, typer.Option(help="Data set (see `zoattack list datasets`).", rich_help_panel=P_MODEL)
    ] = "fashion-mnist",
    data_dir: DataDirOption = None,
    weights: WeightsOption = None,
    model_dir: ModelDirOption = None,
    threat_model: Annotated[
        str | None, typer.Option(help="robustbench threat model.", rich_help_panel=P_MODEL)
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="remote:URL: bearer token (default $ZOATTACK_TOKEN).",
            rich_help_panel=P_MODEL,
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="remote:URL: seconds per request (default 30).", rich_help_panel=P_MODEL),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(help="remote:URL: retries per request (default 5).", rich_help_panel=P_MODEL),
    ] = None,
    max_rps: Annotated[
        float | None,
        typer.Option(
            help="remote:URL: at most this many requests per second.", rich_help_panel=P_MODEL
        ),
    ] = None,
    images: Annotated[
        int, typer.Option(help="Attack the first N test images.", rich_help_panel=P_MODEL)
    ] = 100,
    norm: Annotated[str, typer.Option(help="linf or l2.", rich_help_panel=P_THREAT)] = "linf",
    eps: Annotated[
        float | None,
        typer.Option(help="Radius (default 0.1 linf, 1.5 l2).", rich_help_panel=P_THREAT),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="random, least-likely or a class index (default: untargeted).",
            rich_help_panel=P_THREAT,
        ),
    ] = None,
    loss: Annotated[str, typer.Option(help="margin or ce.", rich_help_panel=P_THREAT)] = "margin",
    budget: Annotated[
        int,
        typer.Option(help="Queries per image (all scored inputs count).", rich_help_panel=P_THREAT),
    ] = 1000,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="Update rule (see `zoattack list optimizers --defaults`); "
            "default sign (Linf) or square (L2).",
            rich_help_panel=P_OPT,
        ),
    ] = None,
    estimator: Annotated[
        str | None,
        typer.Option(
            help="Gradient estimator (default: the rule's pairing).", rich_help_panel=P_OPT
        ),
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Directions K per step.", rich_help_panel=P_OPT)
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Step size (default by rule and norm).", rich_help_panel=P_OPT),
    ] = None,
    mu: Annotated[
        float | None, typer.Option(help="Finite-difference radius.", rich_help_panel=P_OPT)
    ] = None,
    difference: Annotated[
        str | None,
        typer.Option(
            help="forward (K+1 queries) or central (2K, antithetic) differences.",
            rich_help_panel=P_OPT,
        ),
    ] = None,
    momentum: Annotated[
        float | None,
        typer.Option(
            help="zo_signsgd: running average of the estimates before the sign (e.g. 0.9).",
            rich_help_panel=P_OPT,
        ),
    ] = None,
    subspace: Annotated[
        str | None,
        typer.Option(
            help="full, tile:K (a CxKxK variable upsampled) or dct:K (lowest KxK DCT "
            "frequencies); A>B>C refines coarse-to-fine, e.g. tile:7>tile:14>full.",
            rich_help_panel=P_OPT,
        ),
    ] = None,
    universal: Annotated[
        bool,
        typer.Option(
            "--universal",
            help="One perturbation for all images (each evaluation costs 1 query per image).",
            rich_help_panel=P_THREAT,
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed; same seed on CPU gives identical results.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Largest batch sent to the model.")] = 4096,
    chunk_size: Annotated[
        int,
        typer.Option(
            help="Images attacked together; also the unit --resume redoes (seeded per chunk)."
        ),
    ] = DEFAULT_CHUNK,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out: keep its finished images, attack the rest.",
            rich_help_panel=P_OUT,
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON.", rich_help_panel=P_OUT)
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write per_image.csv and summary.json here.", rich_help_panel=P_OUT
        ),
    ] = None,
    save_images: Annotated[
        bool,
        typer.Option(
            "--save-images",
            help="With --out: a PNG grid "
            "(original/adversarial/perturbation) and a "
            "success-vs-queries curve.",
            rich_help_panel=P_OUT,
        ),
    ] = False,
) -> None:
    """Attack a model you may only query; report success rate and per-image queries."""
    if save_images and out_dir is None:
        raise ValueError("--save-images needs --out DIR to write the PNG files into")
    if resume and out_dir is None:
        raise ValueError("--resume needs --out DIR, the folder of the run to continue")
    if resume and universal:
        raise ValueError(
            "--resume continues per-image attacks; a --universal run has one "
            "perturbation and restarts from scratch"
        )
    spec = AttackSpec(
        model=model,
        dataset=dataset,
        data_dir=data_dir,
        weights=weights,
        model_dir=model_dir,
        threat_model=threat_model,
        images=images,
        norm=norm,
        eps=eps,
        target=target,
        loss=loss,
        budget=budget,
        optimizer=optimizer,
        estimator=estimator,
        samples=samples,
        lr=lr,
        mu=mu,
        difference=difference,
        momentum=momentum,
        subspace=subspace,
        seed=seed,
        device=device,
        max_batch=max_batch,
        chunk_size=chunk_size,
    ).resolved()
    folder = RunFolder(out_dir) if out_dir is not None else None
    if folder is not None and not universal:
        folder.check_start(spec, resume=resume)  # before loading anything: fail fast
    seed_everything(seed)  # third-party code only; zoattack draws from per-chunk generators
    remote_opts = {
        k: v
        for k, v in {
            "token": token,
            "timeout": timeout,
            "retries": retries,
            "max_rps": max_rps,
        }.items()
        if v is not None
    }
    if remote_opts and not spec.model.startswith("remote:"):
        raise ValueError("--token/--timeout/--retries/--max-rps apply to --model remote:URL only")
    job = prepare(spec, model_options=remote_opts)
    settings = job.settings()
    if universal:
        _run_universal(job, settings, as_json, out_dir)
        return
    done_rows = folder.start(settings, resume=resume) if folder is not None else []
    done = {int(r["index"]) for r in done_rows}
    todo = sum(1 for i in range(len(job.labels)) if i not in done)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} queries"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(job.label, total=spec.budget * todo)
        try:
            outcome = run_job(
                job,
                done=done,
                on_rows=folder.append if folder is not None else None,
                progress=lambda q: progress.update(task, completed=q),
            )
        except JobInterrupted as exc:
            where = (
                f"; {len(done) + len(exc.rows)} finished images are in "
                f"{folder.csv_path}, rerun with --resume to continue"
                if folder is not None
                else ""
            )
            err.print(
                f"[bold red]error:[/] {escape(str(exc) + where)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    wall = time.perf_counter() - t0
    rows = sorted([*done_rows, *outcome.rows], key=lambda r: int(r["index"]))
    summary = summarize_rows(rows, wall_seconds=wall, scored_inputs=outcome.scored_inputs)
    if resume:
        summary["resumed_with_images"] = len(done)
    if folder is not None:
        folder.finish(rows, summary, settings)
        if save_images and outcome.chunks:
            from zoattack.attacks.plots import save_image_grid, save_success_curve

            merged = merge_results([c.result for c in outcome.chunks])
            xs = torch.cat(
                [job.images[c.start : c.start + len(c.result.label)] for c in outcome.chunks]
            )
            save_image_grid(folder.path / "examples.png", xs, merged, classes=job.classes)
            save_success_curve(
                folder.path / "success_vs_queries.png",
                merged,
                spec.budget,
                label=str(spec.optimizer),
            )
    title = (
        f"{job.label} vs {spec.model} on {spec.dataset}: {spec.norm} eps={spec.eps:g}, "
        f"budget {spec.budget:,}"
    )
    if _report(
        title,
        settings,
        summary,
        as_json,
        keys=(
            "initially_correct",
            "successes",
            "success_rate",
            "mean_queries_success",
            "median_queries_success",
            "mean_queries_all",
            "median_linf_success",
            "median_l2_success",
            "wall_seconds",
            "scored_inputs_per_second",
        ),
    ):
        return
    if folder is not None:
        extra = ", examples.png, success_vs_queries.png" if save_images else ""
        out.print(f"wrote {folder.path}/per_image.csv, summary.json{extra}")


def _run_universal(
    job: PreparedJob, settings: dict[str, object], as_json: bool, out_dir: Path | None
) -> None:
    from zoattack.attacks.universal import run_universal

    spec = job.spec
    assert spec.eps is not None and spec.subspace is not None
    gen = make_generator(spec.seed, job.device)
    x, y = job.images.to(job.device), job.labels.to(job.device)
    blackbox = BlackBox(
        job.model,
        output="logits",
        budget=spec.budget,
        max_batch=spec.max_batch,
        input_shape=tuple(x.shape[1:]),
    )
    rule: ZORule = spec.make_rule()
    norm, eps, budget, classes, target = (
        spec.norm,
        spec.eps,
        spec.budget,
        len(job.classes),
        spec.target,
    )
    # One target class for the whole set: a universal perturbation has one goal.
    tgt = None
    if target is not None:
        if target == "random":
            cls = int(torch.randint(0, classes, (1,), generator=gen, device=gen.device))
        elif target.isdigit() and int(target) < classes:
            cls = int(target)
        else:
            raise ValueError(
                "--universal takes --target random or a class index "
                f"in [0, {classes - 1}], got {target!r}"
            )
        tgt = torch.full_like(y, cls)
    t0 = time.perf_counter()
    res = run_universal(
        blackbox,
        x,
        y,
        rule,
        generator=gen,
        norm=norm,
        eps=eps,
        budget=budget,
        loss=spec.loss,
        target=tgt,
        subspace=spec.subspace,
    )
    wall = time.perf_counter() - t0
    summary = {
        "images": len(y),
        "initially_correct": int(res.clean_correct.sum()),
        "fooled": int(res.fooled.sum()),
        "fooling_rate": round(res.fooling_rate or 0.0, 4),
        "evaluations": res.evaluations,
        "queries_per_image": int(res.queries.max()),
        "linf": round(res.linf, 6),
        "l2": round(res.l2, 6),
        "wall_seconds": round(wall, 3),
        "scored_inputs": blackbox.total_queries,
        "counting_rule": "one query = one input scored; one evaluation of the universal "
        "perturbation scores every attacked image once",
    }
    if out_dir is not None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {"delta": res.delta.detach().cpu().contiguous()}, str(out_dir / "delta.safetensors")
        )
        (out_dir / "summary.json").write_text(
            json.dumps({"settings": settings, "summary": summary}, indent=2)
        )
    title = (
        f"universal {settings['optimizer']} on {settings['model']}: {norm} eps={eps:g}, "
        f"budget {budget:,} per image"
    )
    _report(
        title, settings, summary, as_json, keys=tuple(k for k in summary if k != "counting_rule")
    )


def _report(
    title: str,
    settings: dict[str, object],
    summary: dict[str, object],
    as_json: bool,
    keys: tuple[str, ...],
) -> bool:
    """Print the summary as JSON (returns True) or as a Rich table plus the counting rule."""
    if as_json:
        typer.echo(json.dumps({"settings": settings, "summary": summary}))
        return True
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        val = summary[key]
        text = (
            "-"
            if val is None
            else (
                f"{val:,.4g}"
                if isinstance(val, float)
                else f"{val:,}"
                if isinstance(val, int)
                else str(val)
            )
        )
        table.add_row(key.replace("_", " "), text)
    out.print(table)
    out.print(f"[dim]counting rule: {summary['counting_rule']}[/]")
    return False
