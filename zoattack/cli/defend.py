"""`zoattack defend`: ZO-AE-DS black-box defense (Zhang et al., ICLR 2022): train, certify.

``defend train`` trains a denoiser (+ encoder in front of a frozen decoder) for a model it may
only query, checkpointing every epoch (``--resume`` continues); ``defend certify`` runs Cohen et
al.'s CERTIFY on the defended, smoothed classifier, one CSV row per image (``--resume`` too).
A trained defense is also a model: ``zoattack run --model defended:DIR`` attacks it
(``defended:DIR,smooth=100`` attacks the smoothed classifier; see zoattack.defense.model).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoattack.cli._common import IndicesOption, err, guarded, out, resolve_device

app = typer.Typer(
    help="ZO-AE-DS black-box defense: train a denoiser+autoencoder with ZO "
    "gradients, certify by randomized smoothing.",
    no_args_is_help=True,
)

# Offline fallback when a data set's training split is absent (only Fashion-MNIST's first
# 1,000 test images ship): train on the first images, certify on the ones after them.
BUNDLED_TRAIN = 800
_Opt = typer.Option

# Help panels of `defend train`, as `run` groups its options.
P_METHOD = "Method (ZO estimator)"
P_BOX = "Black box and data"
P_TRAIN = "Training"
P_ARCH = "Architecture"
P_RUN = "Run"


def _load_train(dataset: str, data_dir: Path | None, limit: int | None):
    from zoattack.data import MissingFileError, load_dataset

    root = str(data_dir) if data_dir is not None else None
    try:
        ds = load_dataset(dataset, split="train", data_dir=root, limit=limit)
        return ds, {
            "dataset": ds.name,
            "split": "train",
            "source": ds.source,
            "start": 0,
            "count": len(ds),
        }
    except MissingFileError:
        if data_dir is not None:
            raise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset(dataset, split="test", limit=limit or BUNDLED_TRAIN)
        note = (
            f"note: no {ds.name} training split offline; training on test images "
            f"0-{len(ds) - 1} ({ds.source}); `defend certify` then starts at image {len(ds)}"
        )
        return ds, {
            "note": note,
            "dataset": ds.name,
            "split": "test",
            "source": ds.source,
            "start": 0,
            "count": len(ds),
        }


@app.command("train")
def train_command(
    method: Annotated[
        str,
        _Opt(
            help="zo-ae-ds (the paper), zo-ds (ZO in pixel space), or the "
            "white-box references fo-ae-ds, fo-ds.",
            rich_help_panel=P_METHOD,
        ),
    ] = "zo-ae-ds",
    model: Annotated[
        str,
        _Opt(
            "--model",
            "-m",
            help="The black box (anything `zoattack run` accepts).",
            rich_help_panel=P_BOX,
        ),
    ] = "small_cnn",
    weights: Annotated[
        Path | None,
        _Opt(help="Weights file for --model (default: shipped).", rich_help_panel=P_BOX),
    ] = None,
    dataset: Annotated[
        str, _Opt("--dataset", "-d", help="Training data set.", rich_help_panel=P_BOX)
    ] = "fashion-mnist",
    data_dir: Annotated[Path | None, _Opt(help="Data root.", rich_help_panel=P_BOX)] = None,
    train_images: Annotated[
        int | None,
        _Opt(
            help="Train on the first N images (default: the "
            "whole train split; offline Fashion-MNIST: 800 of "
            "the bundled test images).",
            rich_help_panel=P_BOX,
        ),
    ] = None,
    output: Annotated[
        str,
        _Opt(
            help="What the black box returns: logits or probs (training needs scores).",
            rich_help_panel=P_BOX,
        ),
    ] = "logits",
    estimator: Annotated[
        str,
        _Opt(
            help="ZO estimator over the latent: coordinate (CGE), "
            "sphere (RGE), gaussian, dap, lizo ...",
            rich_help_panel=P_METHOD,
        ),
    ] = "coordinate",
    samples: Annotated[
        int | None,
        _Opt(
            "--samples",
            "-q",
            help="Directions q per estimate (coordinate: default all d_z; others: 20).",
            rich_help_panel=P_METHOD,
        ),
    ] = None,
    mu: Annotated[float, _Opt(help="Finite-difference radius.", rich_help_panel=P_METHOD)] = 0.005,
    difference: Annotated[
        str, _Opt(help="forward or central differences.", rich_help_panel=P_METHOD)
    ] = "forward",
    sigma: Annotated[
        float,
        _Opt(help="Training noise standard deviation ([0,1] pixels).", rich_help_panel=P_TRAIN),
    ] = 0.25,
    epochs: Annotated[
        int, _Opt(help="Stage-2 epochs (denoiser+encoder).", rich_help_panel=P_TRAIN)
    ] = 10,
    ae_epochs: Annotated[
        int,
        _Opt(help="Stage-1 autoencoder pretraining epochs (AE methods).", rich_help_panel=P_TRAIN),
    ] = 100,
    batch_size: Annotated[int, _Opt(help="Images per step.", rich_help_panel=P_TRAIN)] = 64,
    lr: Annotated[
        float | None,
        _Opt(
            help="Adam learning rate (default 1e-3; the authors advise 1e-4 for long RGE "
            "runs, whose estimates are noisier than CGE's).",
            rich_help_panel=P_TRAIN,
        ),
    ] = None,
    weight_decay: Annotated[float, _Opt(help="Adam weight decay.", rich_help_panel=P_TRAIN)] = 1e-5,
    lr_step: Annotated[
        int | None,
        _Opt(help="Decay lr x0.1 every N epochs (default: constant).", rich_help_panel=P_TRAIN),
    ] = None,
    mse_weight: Annotated[
        float,
        _Opt(
            help="Weight of the MSE denoising term (paper Eq. 2; 0 = the authors' code).",
            rich_help_panel=P_TRAIN,
        ),
    ] = 0.0,
    latent: Annotated[
        int | None,
        _Opt(
            help="Latent size d_z (default 128 for 28x28, 192 for 3x32x32).", rich_help_panel=P_ARCH
        ),
    ] = None,
    denoiser_depth: Annotated[
        int | None, _Opt(help="DnCNN layers (default 5 for 28x28, 17).", rich_help_panel=P_ARCH)
    ] = None,
    denoiser_width: Annotated[
        int | None, _Opt(help="DnCNN channels (default 16 for 28x28, 64).", rich_help_panel=P_ARCH)
    ] = None,
    val_images: Annotated[
        int,
        _Opt(
            help="Hold out the last N training images; keep the epoch with the best smoothed "
            "accuracy on them (0: keep the last epoch).",
            rich_help_panel=P_BOX,
        ),
    ] = 0,
    augment: Annotated[
        str,
        _Opt(
            help="none, crop, flip or crop+flip (the authors' CIFAR-10 practice; re-queries "
            "each augmented image's top-1: +1 query per image and step).",
            rich_help_panel=P_BOX,
        ),
    ] = "none",
    seed: Annotated[
        int,
        _Opt(
            help="Seeds init, noise, shuffling and estimator directions.", rich_help_panel=P_TRAIN
        ),
    ] = 0,
    device: Annotated[str, _Opt(help="auto, cpu or cuda.", rich_help_panel=P_RUN)] = "auto",
    max_batch: Annotated[
        int, _Opt(help="Largest batch sent to the black box.", rich_help_panel=P_RUN)
    ] = 4096,
    threads: Annotated[int | None, _Opt(help="CPU threads.", rich_help_panel=P_RUN)] = None,
    out_dir: Annotated[
        Path, _Opt("--out", help="Folder for checkpoint, weights, card.", rich_help_panel=P_RUN)
    ] = Path("runs/defense"),
    resume: Annotated[
        bool, _Opt("--resume", help="Continue an interrupted run in --out.", rich_help_panel=P_RUN)
    ] = False,
    overwrite: Annotated[
        bool,
        _Opt(
            "--overwrite",
            help="Replace the defense already in --out (else refused).",
            rich_help_panel=P_RUN,
        ),
    ] = False,
) -> None:
    """Train a defense (denoiser + encoder) for a black box, checkpointing every epoch."""
    _train(**locals())


@guarded
def _train(**kw: Any) -> None:
    import torch

    from zoattack.blackbox import BlackBox
    from zoattack.defense.bridge import check_scores_blackbox
    from zoattack.defense.train import (
        CARD,
        CHECKPOINT,
        WEIGHTS,
        DefenseConfig,
        build_defense,
        train_defense,
    )
    from zoattack.models import create_model
    from zoattack.models.fit import check_takes_inputs
    from zoattack.results.folder import refuse_replacing
    from zoattack.seeding import make_generator, seed_everything

    if kw["output"] not in ("logits", "probs", "labels"):
        raise ValueError(f"--output must be logits, probs or labels, got {kw['output']!r}")
    if kw["output"] == "labels":
        raise ValueError(
            "training needs a black box that returns scores (logits or probs), "
            "--output labels gives top-1 labels only; labels are enough for "
            "`defend certify`, not for training"
        )
    samples = kw["samples"]
    if samples is None and kw["estimator"] not in ("coordinate", "cge", "zoo"):
        samples = 20
    config = DefenseConfig(
        method=kw["method"],
        sigma=kw["sigma"],
        estimator=kw["estimator"],
        samples=samples,
        mu=kw["mu"],
        difference=kw["difference"],
        epochs=kw["epochs"],
        ae_epochs=kw["ae_epochs"],
        batch_size=kw["batch_size"],
        lr=kw["lr"] if kw["lr"] is not None else 1e-3,
        weight_decay=kw["weight_decay"],
        lr_step=kw["lr_step"],
        mse_weight=kw["mse_weight"],
        latent=kw["latent"],
        denoiser_depth=kw["denoiser_depth"],
        denoiser_width=kw["denoiser_width"],
        seed=kw["seed"],
        val_images=kw["val_images"],
        augment=kw["augment"],
    ).validate()
    if kw["train_images"] is not None and kw["train_images"] < 1:
        raise ValueError(f"--train-images must be >= 1, got {kw['train_images']}")
    if kw["max_batch"] < 1:
        raise ValueError(f"--max-batch must be >= 1, got {kw['max_batch']}")
    if config.zeroth_order:
        from zoattack.estimators import create_estimator

        create_estimator(
            config.estimator, num_samples=config.samples, mu=config.mu, difference=config.difference
        )  # bad names/values fail before loading
    out_dir = Path(kw["out_dir"])
    ckpt = out_dir / CHECKPOINT
    if kw["resume"] and kw["overwrite"]:
        refuse_replacing(out_dir, "a defense", resume=True, overwrite=True)
    if kw["resume"] and not ckpt.is_file():
        # Checked before anything is loaded or created (no empty --out folder left behind).
        raise ValueError(
            f"nothing to resume in {kw['out_dir']}: no {CHECKPOINT} there; run without "
            "--resume first (or point --out at the interrupted training)"
        )
    held = [n for n in (CHECKPOINT, WEIGHTS, CARD) if (out_dir / n).exists()]
    if held and not kw["resume"]:
        refuse_replacing(
            out_dir,
            f"a defense ({', '.join(held)})",
            resume=False,
            overwrite=kw["overwrite"],
            can_resume=ckpt.is_file(),
        )
    dev = resolve_device(kw["device"])
    if kw["threads"] is not None:
        torch.set_num_threads(kw["threads"])
    seed_everything(config.seed)
    data, data_info = _load_train(kw["dataset"], kw["data_dir"], kw["train_images"])
    build_defense(config, data.image_shape, make_generator(0))  # shape errors before any query
    note = data_info.pop("note", None)
    if note:
        err.print(note, highlight=False, soft_wrap=True)
    name = kw["model"]
    weights = str(Path(kw["weights"]).expanduser().absolute()) if kw["weights"] else None
    net = create_model(
        name,
        dataset=data,
        weights=weights,
        pretrained=weights is None and ":" not in name,
        device=dev,
    )
    # One probe forward of our own module (never a remote one) before any file is written.
    check_takes_inputs(net, data.image_shape, dataset=data.name, model_name=name, weights=weights)
    blackbox = BlackBox(
        net, output=kw["output"], max_batch=kw["max_batch"], input_shape=data.image_shape
    )
    check_scores_blackbox(blackbox)
    record = {
        "blackbox": {
            "model": name,
            "dataset": data.name,
            "weights": weights,
            "output": kw["output"],
            "num_classes": data.num_classes,
        },
        "data": data_info,
        "classes": data.classes,
    }
    est = f"{config.estimator} q={config.samples or 'all'}" if config.zeroth_order else "backprop"
    err.print(
        f"{config.method} for {name} on {len(data):,} {data.name} images "
        f"(sigma {config.sigma:g}, {est}) on {dev} -> {kw['out_dir']}",
        highlight=False,
        soft_wrap=True,
    )
    progress = Progress(
        TextColumn("[bold]{task.fields[stage]} epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[queries]} queries"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    stages = {1: "autoencoder", 2: "defense"}
    with progress:
        task = progress.add_task("train", total=None, stage="", epoch=0, loss="-", queries=0)

        def on_step(
            stage: int, epoch: int, step: int, steps: int, loss: float, queries: int
        ) -> None:
            progress.update(
                task,
                total=steps,
                completed=step,
                stage=stages[stage],
                epoch=epoch,
                loss=f"{loss:.4f}",
                queries=f"{queries:,}",
            )

        def on_epoch(row: dict[str, Any]) -> None:
            if row["stage"] == 2 or row["epoch"] % 10 == 0 or row["epoch"] == config.ae_epochs:
                val = f", val accuracy {row['val_accuracy']:.3f}" if "val_accuracy" in row else ""
                progress.console.print(
                    f"{stages[row['stage']]} epoch {row['epoch']}: loss {row['loss']:.4f}{val}, "
                    f"{row['queries']:,} queries, {row['seconds']:.1f} s",
                    highlight=False,
                )

        if kw["overwrite"]:  # every check has passed: only now is the old defense removed
            for n in held:
                (out_dir / n).unlink(missing_ok=True)
        card = train_defense(
            config,
            blackbox,
            data.images,
            kw["out_dir"],
            white_box=net if not config.zeroth_order else None,
            device=dev,
            resume=kw["resume"],
            record=record,
            on_step=on_step,
            on_epoch=on_epoch,
            labels=data.labels,
        )
    q = card["queries"]
    extra = (
        f" + {q['whitebox_evaluations']:,} white-box forward/backward passes"
        if q["whitebox_evaluations"]
        else ""
    )
    out.print(
        f"trained {config.method} ({card['epochs_done']} epochs, "
        f"{card['train_seconds']:.0f} s): {q['train_blackbox']:,} black-box training "
        f"queries{extra}"
        + (
            f"; kept epoch {card['selection']['best_epoch']} (validation accuracy "
            f"{card['selection']['best_val_accuracy']:.3f} on {config.val_images} held-out images)"
            if card.get("selection") and card["selection"].get("best_epoch")
            else ""
        )
        + f"; wrote {Path(kw['out_dir']) / 'defense.json'}",
        highlight=False,
        soft_wrap=True,
    )


def _rate(tp: dict[str, Any]) -> str:
    parts = []
    if tp.get("images_per_second"):
        parts.append(f"{tp['images_per_second']:.3g} images/s")
    if tp.get("queries_per_certified_image"):
        parts.append(f"{tp['queries_per_certified_image']:,.0f} queries per certified image")
    return f" ({', '.join(parts)})" if parts else ""


@app.command("certify")
def certify_command(
    defense: Annotated[Path, _Opt(help="Folder written by `zoattack defend train`.")],
    sigma: Annotated[
        float | None, _Opt(help="Smoothing noise (default: the training sigma).")
    ] = None,
    n0: Annotated[int, _Opt("--n0", help="Draws that pick the class.")] = 100,
    n: Annotated[int, _Opt("--n", help="Draws that certify it.")] = 10_000,
    alpha: Annotated[float, _Opt(help="Failure probability of the certificate.")] = 0.001,
    batch: Annotated[int, _Opt(help="Noisy copies of each image per round.")] = 1000,
    group: Annotated[
        int,
        _Opt(
            help="Images certified together: their noisy copies share black-box calls "
            "(group x batch inputs per call; each image keeps its own noise)."
        ),
    ] = 1,
    images: Annotated[int, _Opt(help="How many test images to certify.")] = 100,
    start: Annotated[
        int | None,
        _Opt(
            help="First image index (default 0, or right after the "
            "training images when the defense trained on the test "
            "split)."
        ),
    ] = None,
    skip: Annotated[int, _Opt(help="Certify every k-th image.")] = 1,
    indices: IndicesOption = None,
    dataset: Annotated[str | None, _Opt(help="Data set (default: the defense's).")] = None,
    data_dir: Annotated[Path | None, _Opt(help="Data root.")] = None,
    radii: Annotated[str, _Opt(help="Radii for the certified-accuracy table.")] = "0,0.25,0.5,0.75",
    seed: Annotated[int, _Opt(help="Seeds the noise (per image: seed and index).")] = 0,
    device: Annotated[str, _Opt(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, _Opt(help="CPU threads (default: all cores).")] = None,
    out_dir: Annotated[
        Path | None, _Opt("--out", help="Output folder (default: DEFENSE/certify-sigmaS).")
    ] = None,
    resume: Annotated[
        bool, _Opt("--resume", help="Continue an interrupted certification.")
    ] = False,
    overwrite: Annotated[
        bool, _Opt("--overwrite", help="Replace the certification already in --out.")
    ] = False,
) -> None:
    """Certify the smoothed defended classifier (Cohen et al. CERTIFY), one row per image."""
    _certify(**locals())


@guarded
def _certify(**kw: Any) -> None:
    import torch

    from zoattack.jobs.certify import certify_defense, parse_radii

    radii = parse_radii(kw["radii"])
    if kw["threads"] is not None:
        torch.set_num_threads(kw["threads"])
    with Progress(
        TextColumn("[bold]certify"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("certify", total=None, acc="", visible=False)
        tally = {"done": 0, "correct": 0}

        def on_image(row: dict[str, Any]) -> None:
            tally["done"] += 1
            tally["correct"] += int(row["correct"])
            progress.update(task, advance=1, acc=f"correct {tally['correct']}/{tally['done']}")

        report = certify_defense(
            kw["defense"],
            sigma=kw["sigma"],
            n0=kw["n0"],
            n=kw["n"],
            alpha=kw["alpha"],
            batch=kw["batch"],
            images=kw["images"],
            start=kw["start"],
            skip=kw["skip"],
            indices=kw["indices"],
            dataset=kw["dataset"],
            data_dir=kw["data_dir"],
            radii=radii,
            seed=kw["seed"],
            device=kw["device"],
            out=kw["out_dir"],
            resume=kw["resume"],
            overwrite=kw["overwrite"],
            group=kw["group"],
            on_note=lambda msg: progress.console.print(msg, highlight=False, soft_wrap=True),
            on_start=lambda total: progress.update(task, total=total, visible=True),
            on_image=on_image,
        )
    res, rows = report.result, report.rows
    table = Table(
        title=f"{report.method}: certified accuracy, sigma {report.sigma:g}, {len(rows)} images"
    )
    for r in report.radii:
        table.add_column(f"r={r:g}", justify="right")
    table.add_row(*(f"{100 * v:.1f}%" for v in res["certified_accuracy"].values()))
    out.print(table)
    wb = report.train_queries["whitebox_evaluations"]
    out.print(
        f"abstained {res['abstained']}/{len(rows)}; queries: training "
        f"{report.train_queries['blackbox']:,} (black box)"
        + (f" + {wb:,} white-box" if wb else "")
        + f", certification {res['queries']['certify_blackbox']:,}"
        + _rate(res.get("throughput") or {})
        + f"; wrote {report.out}",
        highlight=False,
        soft_wrap=True,
    )
