"""`zoattack run`: a query-limited black-box attack on a real model, with an honest ledger."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from zoattack.cli._common import (
    EXIT_INTERRUPTED,
    P_MODEL,
    P_OPT,
    P_OUT,
    P_THREAT,
    DataDirOption,
    DatasetOption,
    DownloadOption,
    IndicesOption,
    ModelDirOption,
    RandomInitOption,
    Sha256Option,
    ThreatModelOption,
    WeightsOption,
    download_options,
    err,
    guarded,
    out,
)
from zoattack.jobs.defaults import DEFAULT_CHUNK

if TYPE_CHECKING:
    from zoattack.jobs.attack import AttackSpec

# Defaults live in each rule's registry entry (zoattack list optimizers --defaults).
__all__ = ["run_command"]


def attack_is_decision(spec: AttackSpec) -> bool:
    """Whether ``spec`` names a hard-label attack (its progress shows distances)."""
    from zoattack.jobs.resolve import score_attack_names

    return spec.attack is not None and spec.attack.lower().replace("-", "_") not in (
        score_attack_names()
    )


P_HARD = "Hard-label attacks"


@guarded
def run_command(
    model: Annotated[
        str,
        typer.Option(
            help="Zoo name (resnet20, small_cnn) or torchvision:/timm:/robustbench:NAME.",
            rich_help_panel=P_MODEL,
        ),
    ] = "small_cnn",
    dataset: DatasetOption = "fashion-mnist",
    data_dir: DataDirOption = None,
    weights: WeightsOption = None,
    model_dir: ModelDirOption = None,
    threat_model: ThreatModelOption = None,
    download: DownloadOption = False,
    sha256: Sha256Option = None,
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
    indices: IndicesOption = None,
    random_init: RandomInitOption = False,
    norm: Annotated[str, typer.Option(help="linf or l2.", rich_help_panel=P_THREAT)] = "linf",
    eps: Annotated[
        str | None,
        typer.Option(
            help="Radius, a number or a fraction like 8/255 (default: the data set's "
            "convention, `zoattack list datasets`).",
            rich_help_panel=P_THREAT,
            show_default=False,
        ),
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
            help="The core update rule of --attack zo or opt (see `zoattack list optimizers "
            "--defaults`); given alone it means --attack zo.",
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
            help="zo_signsgd, zo_sgd, lizo: running average of the estimates before the step "
            "(e.g. 0.9).",
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
    # --- generic tricks of the gradient rules (ZORule; tuned values per rule and norm) ---
    start: Annotated[
        str | None,
        typer.Option(
            help="Gradient rules' first iterate: zero (the clean image), stripes (Square's "
            "vertical-stripe vertex) or vertex (random signs); scored as a query.",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    restart: Annotated[
        int | None,
        typer.Option(
            help="Gradient rules: restart an image from its best point with fresh rule state "
            "after this many steps without improvement (0: off).",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    mu_decay: Annotated[
        float | None,
        typer.Option(
            help="Gradient rules: the smoothing radius decays geometrically from mu to "
            "mu*R over the budget (1: constant).",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    lr_decay: Annotated[
        str | None,
        typer.Option(
            help="Gradient rules' lr schedule: constant, sqrt (lr/sqrt(t)) or halving (halve "
            "at APGD's budget checkpoints).",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    # --- transfer prior (P-RGF) ---
    prior: Annotated[
        str | None,
        typer.Option(
            help="A local surrogate model (e.g. small_cnn, resnet20, torchvision:NAME) whose "
            "gradient biases the directions (P-RGF); sets --estimator prior unless given. "
            "White-box and local: costs no queries of the victim.",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    prior_weights: Annotated[
        str | None,
        typer.Option(
            help="Weights file for the --prior model (default: its shipped weights).",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    # --- end transfer prior ---
    surrogates: Annotated[
        str | None,
        typer.Option(
            help="Local surrogate models M1,M2,... on the victim's data set (zoo names as for "
            "--model): used by --attack gfcs and transfer, and by the prior estimator (the "
            "mean of their loss gradients). Their passes are counted apart, never as queries.",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    surrogate_weights: Annotated[
        str | None,
        typer.Option(
            help="Weights files for --surrogates, in order, comma-separated (an empty entry: "
            "that model's shipped weights).",
            rich_help_panel=P_OPT,
            show_default=False,
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
            help="Continue the run in --out (same options): keep its finished images, "
            "attack the rest.",
            rich_help_panel=P_OUT,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run already in --out (otherwise refused).",
            rich_help_panel=P_OUT,
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON.", rich_help_panel=P_OUT)
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write per_image.csv, summary.json and adversarial.safetensors here.",
            rich_help_panel=P_OUT,
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
    plot_format: Annotated[
        str,
        typer.Option(
            "--plot-format",
            help="Figures as png, pdf or svg (pdf, svg: vector, for papers).",
            rich_help_panel=P_OUT,
        ),
    ] = "png",
    # -- hard-label (decision-based) attacks (issue 13) ------------------------------------
    attack: Annotated[
        str | None,
        typer.Option(
            help="The attack (see `zoattack list attacks`): square, sign, zo (a core rule x "
            "estimator: --optimizer/--estimator), or hard-label hsja, sign_opt, rays, opt "
            "(--optimizer/--estimator/--subspace pick its core rule), auto (sign_opt at L2, "
            "rays at Linf). Hard-label attacks see labels only: the model must answer labels "
            "(serve --output labels) or pass --labels-only. Default: sign (Linf), square (L2); "
            "--optimizer RULE alone means --attack zo.",
            rich_help_panel=P_OPT,
            show_default=False,
        ),
    ] = None,
    labels_only: Annotated[
        bool,
        typer.Option(
            "--labels-only",
            help="Show the model to the --attack through its top-1 label only (scores never "
            "reach attack code).",
            rich_help_panel=P_HARD,
        ),
    ] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            help="Start images of the --attack (.pt/.npy/.png: N x C x H x W, or one image "
            "for all; in [0, 1]). Default with --target: a data-set image of the target class.",
            rich_help_panel=P_HARD,
            show_default=False,
        ),
    ] = None,
    # -- end hard-label options ------------------------------------------------------------
) -> None:
    """Attack a model you may only query; report success rate and per-image queries.

    --attack names the attack: score-based ones (square, sign, zo) read logits; hard-label
    ones read labels only and minimise the distance to the decision boundary. With --out,
    adversarial.safetensors holds the adversarial examples (check them: zoattack verify)."""
    # Here, not at the top: `--help` must not import torch (zoattack/cli/_common.py).
    from zoattack.jobs.attack import AttackSpec, JobInterrupted
    from zoattack.jobs.resolve import optimizer_note
    from zoattack.jobs.run import run_attack_job
    from zoattack.norms import parse_eps
    from zoattack.results.tables import summary_json, summary_table
    from zoattack.seeding import seed_everything

    note = optimizer_note(optimizer, attack)
    if note is not None:
        err.print(note, highlight=False, soft_wrap=True)
    spec = AttackSpec(
        model=model,
        dataset=dataset,
        data_dir=data_dir,
        weights=weights,
        model_dir=model_dir,
        threat_model=threat_model,
        images=images,
        norm=norm,
        eps=None if eps is None else parse_eps(eps),
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
        start=start,
        restart=restart,
        mu_decay=mu_decay,
        lr_decay=lr_decay,
        seed=seed,
        device=device,
        max_batch=max_batch,
        chunk_size=chunk_size,
        attack=attack,
        labels_only=labels_only,
        init_from=init_from,
        prior=prior,
        prior_weights=prior_weights,
        random_init=random_init,
        indices=indices,
        surrogates=surrogates,
        surrogate_weights=surrogate_weights,
    )
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
    # How the weights are reached, not what the run does: never part of the recorded settings.
    remote_opts.update(download_options(download, sha256))
    seed_everything(seed)  # third-party code only; zoattack draws from per-chunk generators
    from zoattack.cli._progress import RunProgress, interactive

    enabled = interactive(as_json)
    with RunProgress(err, images=images, enabled=enabled) as progress:
        try:
            report = run_attack_job(
                spec,
                out=out_dir,
                resume=resume,
                overwrite=overwrite,
                universal=universal,
                save_images=save_images,
                plot_format=plot_format,
                model_options=remote_opts,
                on_start=lambda label, total: progress.start(
                    label, total, decision_norm=norm.lower() if attack_is_decision(spec) else None
                ),
                on_progress=progress.queries,
                on_rows=progress.rows,
                on_live=progress.on_live if enabled else None,
            )
        except JobInterrupted as exc:
            progress.stop()
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:  # between chunks or while loading: nothing half-written
            progress.stop()
            where = (
                f"; finished images are in {out_dir}, rerun with --resume to continue"
                if out_dir is not None and (out_dir / "run.json").is_file()
                else ""
            )
            err.print(
                f"[bold red]error:[/] interrupted by the user{escape(where)}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if report.already_complete:
        err.print(
            f"the run in {escape(str(report.folder))} is complete "
            f"({report.summary.get('images')} images); nothing to resume, its summary:",
            highlight=False,
            soft_wrap=True,
        )
    if as_json:
        typer.echo(summary_json(report.settings, report.summary))
        return
    out.print(summary_table(report.title, report.summary, report.keys))
    if report.settings.get("method"):  # which estimator and tricks ran (also in run.json)
        out.print(f"method: {escape(str(report.settings['method']))}", soft_wrap=True)
    out.print(f"[dim]counting rule: {report.summary['counting_rule']}[/]")
    for line in report.notes:
        err.print(f"note: {escape(line)}", highlight=False, soft_wrap=True)
    if report.folder is not None and report.written:
        out.print(f"wrote {report.folder}/{', '.join(report.written)}")
