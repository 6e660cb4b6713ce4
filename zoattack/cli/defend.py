"""`zoattack defend`: ZO-AE-DS black-box defense (Zhang et al., ICLR 2022): train, certify.

``defend train`` trains a denoiser (+ encoder in front of a frozen decoder) for a model it may
only query, checkpointing every epoch (``--resume`` continues); ``defend certify`` runs Cohen et
al.'s CERTIFY on the defended, smoothed classifier, one CSV row per image (``--resume`` too).
A trained defense is also a model: ``zoattack run --model defended:DIR`` attacks it
(``defended:DIR,smooth=100`` attacks the smoothed classifier; see zoattack.defense.model).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoattack.cli._common import err, guarded, out, resolve_device

app = typer.Typer(
    help="ZO-AE-DS black-box defense: train a denoiser+autoencoder with ZO "
    "gradients, certify by randomized smoothing.",
    no_args_is_help=True,
)

# Offline fallback when a data set's training split is absent (only Fashion-MNIST's first
# 1,000 test images ship): train on the first images, certify on the ones after them.
BUNDLED_TRAIN = 800
_Opt = typer.Option


def _load_train(dataset: str, data_dir: Path | None, limit: int | None):  # type: ignore[no-untyped-def]
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
            "white-box references fo-ae-ds, fo-ds."
        ),
    ] = "zo-ae-ds",
    model: Annotated[
        str, _Opt("--model", "-m", help="The black box (anything `zoattack run` accepts).")
    ] = "small_cnn",
    weights: Annotated[
        Path | None, _Opt(help="Weights file for --model (default: shipped).")
    ] = None,
    dataset: Annotated[str, _Opt("--dataset", "-d", help="Training data set.")] = "fashion-mnist",
    data_dir: Annotated[Path | None, _Opt(help="Data root.")] = None,
    train_images: Annotated[
        int | None,
        _Opt(
            help="Train on the first N images (default: the "
            "whole train split; offline Fashion-MNIST: 800 of "
            "the bundled test images)."
        ),
    ] = None,
    output: Annotated[
        str, _Opt(help="What the black box returns: logits or probs (training needs scores).")
    ] = "logits",
    estimator: Annotated[
        str,
        _Opt(
            help="ZO estimator over the latent: coordinate (CGE), "
            "sphere (RGE), gaussian, dap, lizo ..."
        ),
    ] = "coordinate",
    samples: Annotated[
        int | None,
        _Opt(
            "--samples",
            "-q",
            help="Directions q per estimate (coordinate: default all d_z; others: 20).",
        ),
    ] = None,
    mu: Annotated[float, _Opt(help="Finite-difference radius.")] = 0.005,
    difference: Annotated[str, _Opt(help="forward or central differences.")] = "forward",
    sigma: Annotated[float, _Opt(help="Training noise standard deviation ([0,1] pixels).")] = 0.25,
    epochs: Annotated[int, _Opt(help="Stage-2 epochs (denoiser+encoder).")] = 10,
    ae_epochs: Annotated[
        int, _Opt(help="Stage-1 autoencoder pretraining epochs (AE methods).")
    ] = 100,
    batch_size: Annotated[int, _Opt(help="Images per step.")] = 64,
    lr: Annotated[float | None, _Opt(help="Adam learning rate (default 1e-3).")] = None,
    weight_decay: Annotated[float, _Opt(help="Adam weight decay.")] = 1e-5,
    lr_step: Annotated[
        int | None, _Opt(help="Decay lr x0.1 every N epochs (default: constant).")
    ] = None,
    mse_weight: Annotated[
        float, _Opt(help="Weight of the MSE denoising term (paper Eq. 2; 0 = the authors' code).")
    ] = 0.0,
    latent: Annotated[
        int | None, _Opt(help="Latent size d_z (default 128 for 28x28, 192 for 3x32x32).")
    ] = None,
    denoiser_depth: Annotated[
        int | None, _Opt(help="DnCNN layers (default 5 for 28x28, 17).")
    ] = None,
    denoiser_width: Annotated[
        int | None, _Opt(help="DnCNN channels (default 16 for 28x28, 64).")
    ] = None,
    seed: Annotated[int, _Opt(help="Seeds init, noise, shuffling and estimator directions.")] = 0,
    device: Annotated[str, _Opt(help="auto, cpu or cuda.")] = "auto",
    max_batch: Annotated[int, _Opt(help="Largest batch sent to the black box.")] = 4096,
    threads: Annotated[int | None, _Opt(help="CPU threads.")] = None,
    out_dir: Annotated[Path, _Opt("--out", help="Folder for checkpoint, weights, card.")] = Path(
        "runs/defense"
    ),
    resume: Annotated[bool, _Opt("--resume", help="Continue an interrupted run in --out.")] = False,
) -> None:
    """Train a defense (denoiser + encoder) for a black box, checkpointing every epoch."""
    _train(**locals())


@guarded
def _train(**kw: Any) -> None:
    from zoattack.blackbox import BlackBox
    from zoattack.defense.bridge import check_scores_blackbox
    from zoattack.defense.train import DefenseConfig, build_defense, train_defense
    from zoattack.models import create_model
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
                progress.console.print(
                    f"{stages[row['stage']]} epoch {row['epoch']}: loss {row['loss']:.4f}, "
                    f"{row['queries']:,} queries, {row['seconds']:.1f} s",
                    highlight=False,
                )

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
        f"queries{extra}; wrote {Path(kw['out_dir']) / 'defense.json'}",
        highlight=False,
        soft_wrap=True,
    )


def _parse_radii(text: str) -> list[float]:
    try:
        radii = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--radii must be comma-separated numbers, got {text!r}") from None
    if not radii or any(r < 0 for r in radii):
        raise ValueError(f"--radii must be non-negative numbers, got {text!r}")
    return radii


@app.command("certify")
def certify_command(
    defense: Annotated[Path, _Opt(help="Folder written by `zoattack defend train`.")],
    sigma: Annotated[
        float | None, _Opt(help="Smoothing noise (default: the training sigma).")
    ] = None,
    n0: Annotated[int, _Opt("--n0", help="Draws that pick the class.")] = 100,
    n: Annotated[int, _Opt("--n", help="Draws that certify it.")] = 10_000,
    alpha: Annotated[float, _Opt(help="Failure probability of the certificate.")] = 0.001,
    batch: Annotated[int, _Opt(help="Noisy copies scored per black-box call.")] = 1000,
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
    dataset: Annotated[str | None, _Opt(help="Data set (default: the defense's).")] = None,
    data_dir: Annotated[Path | None, _Opt(help="Data root.")] = None,
    radii: Annotated[str, _Opt(help="Radii for the certified-accuracy table.")] = "0,0.25,0.5,0.75",
    seed: Annotated[int, _Opt(help="Seeds the noise (per image: seed and index).")] = 0,
    device: Annotated[str, _Opt(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, _Opt(help="CPU threads.")] = None,
    out_dir: Annotated[
        Path | None, _Opt("--out", help="Output folder (default: DEFENSE/certify-sigmaS).")
    ] = None,
    resume: Annotated[
        bool, _Opt("--resume", help="Continue an interrupted certification.")
    ] = False,
) -> None:
    """Certify the smoothed defended classifier (Cohen et al. CERTIFY), one row per image."""
    _certify(**locals())


@guarded
def _certify(**kw: Any) -> None:
    from zoattack.blackbox import BlackBox
    from zoattack.data import load_dataset
    from zoattack.defense.certify import (
        Smooth,
        blackbox_classifier,
        certify_images,
        check_certify_args,
        max_radius,
        save_curve,
        summarize,
        write_summary,
    )
    from zoattack.defense.model import load_base_model, load_front

    radii = _parse_radii(kw["radii"])
    if kw["images"] < 1 or kw["skip"] < 1:
        raise ValueError(f"--images and --skip must be >= 1, got {kw['images']}, {kw['skip']}")
    dev = resolve_device(kw["device"])
    if kw["threads"] is not None:
        torch.set_num_threads(kw["threads"])
    front, card = load_front(kw["defense"], dev)
    sigma = kw["sigma"] if kw["sigma"] is not None else float(card["config"]["sigma"])
    check_certify_args(sigma, kw["n0"], kw["n"], kw["alpha"], kw["batch"])
    data_info = card.get("data", {})
    ds_name = (
        kw["dataset"] or data_info.get("dataset") or (card.get("blackbox") or {}).get("dataset")
    )
    if not ds_name:
        raise ValueError(f"{kw['defense']} records no data set; pass --dataset")
    start = kw["start"]
    if start is None:
        start = (
            data_info.get("start", 0) + data_info.get("count", 0)
            if data_info.get("split") == "test" and ds_name == data_info.get("dataset")
            else 0
        )
    if start < 0:
        raise ValueError(f"--start must be >= 0, got {start}")
    root = str(kw["data_dir"]) if kw["data_dir"] is not None else None
    last = start + (kw["images"] - 1) * kw["skip"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset(ds_name, split="test", data_dir=root, limit=last + 1)
    if len(data) <= start:
        raise ValueError(
            f"--start {start} is past the {len(data)} available {ds_name} test "
            "images; lower --start or --images"
        )
    idx = list(range(start, len(data), kw["skip"]))[: kw["images"]]
    shape = tuple(card["architecture"]["image_shape"])
    if data.image_shape != shape:
        raise ValueError(f"the defense takes {shape} images, {ds_name} has {data.image_shape}")
    if data_info.get("split") == "test" and ds_name == data_info.get("dataset"):
        lo, hi = data_info["start"], data_info["start"] + data_info["count"]
        if any(lo <= i < hi for i in idx):
            err.print(
                f"warning: images {lo}-{hi - 1} were used to train this defense; "
                "certified accuracy on them is optimistic",
                highlight=False,
            )
    out_dir = kw["out_dir"] or Path(kw["defense"]) / f"certify-sigma{sigma:g}"
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "defense": str(Path(kw["defense"]).absolute()),
        "method": card["method"],
        "sigma": sigma,
        "n0": kw["n0"],
        "n": kw["n"],
        "alpha": kw["alpha"],
        "seed": kw["seed"],
        "dataset": ds_name,
        "indices": [idx[0], idx[-1], kw["skip"]],
    }
    summary_path = out_dir / "certify.json"
    if kw["resume"] and summary_path.is_file():
        before = json.loads(summary_path.read_text()).get("settings", {})
        for k in ("sigma", "n0", "n", "alpha", "seed", "method"):
            if before.get(k) != settings[k]:
                raise ValueError(
                    f"--resume with different settings: {k} was {before.get(k)!r}, "
                    f"now {settings[k]!r}; use the original settings or a new --out"
                )
    base = load_base_model(card, dev)
    blackbox = BlackBox(base, output="labels", max_batch=max(kw["batch"], 1), input_shape=shape)
    smooth = Smooth(
        blackbox_classifier(blackbox, front),
        len(card.get("classes") or []) or int(card["blackbox"].get("num_classes") or 10),
        sigma,
        kw["batch"],
    )
    write_summary(summary_path, {"settings": settings, "complete": False})
    err.print(
        f"certifying {card['method']} on {len(idx)} {ds_name} test images "
        f"({idx[0]}..{idx[-1]}), sigma {sigma:g}, N0 {kw['n0']}, N {kw['n']:,}, alpha "
        f"{kw['alpha']:g}; max certifiable radius "
        f"{max_radius(sigma, kw['n'], kw['alpha']):.3f}",
        highlight=False,
        soft_wrap=True,
    )
    x = data.images[idx].to(dev)
    y = data.labels[idx]
    with Progress(
        TextColumn("[bold]certify"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("certify", total=len(idx), acc="")
        state = {"done": 0, "correct": 0}

        def on_image(row: dict[str, Any]) -> None:
            state["done"] += 1
            state["correct"] += int(row["correct"])
            progress.update(task, advance=1, acc=f"correct {state['correct']}/{state['done']}")

        t0 = time.perf_counter()
        rows = certify_images(
            smooth,
            x,
            y,
            idx,
            out_dir / "certify.csv",
            n0=kw["n0"],
            n=kw["n"],
            alpha=kw["alpha"],
            seed=kw["seed"],
            blackbox=blackbox,
            resume=kw["resume"],
            on_image=on_image,
        )
    wanted = set(idx)
    rows = sorted((r for r in rows if r["index"] in wanted), key=lambda r: r["index"])
    summ = summarize(rows, radii)
    q = card["queries"]
    result = {
        "settings": settings,
        "complete": True,
        **summ,
        "queries": {
            "train_blackbox": q["train_blackbox"],
            "train_whitebox_evaluations": q["whitebox_evaluations"],
            "certify_blackbox": summ["queries"],
            "certify_blackbox_this_session": blackbox.total_queries,
        },
        "seconds_this_session": round(time.perf_counter() - t0, 1),
        "max_certifiable_radius": max_radius(sigma, kw["n"], kw["alpha"]),
    }
    write_summary(summary_path, result)
    save_curve(out_dir / "certified_accuracy.png", {card["method"]: rows}, sigma)
    table = Table(
        title=f"{card['method']}: certified accuracy, sigma {sigma:g}, {len(rows)} images"
    )
    for r in radii:
        table.add_column(f"r={r:g}", justify="right")
    table.add_row(*(f"{100 * v:.1f}%" for v in summ["certified_accuracy"].values()))
    out.print(table)
    out.print(
        f"abstained {summ['abstained']}/{len(rows)}; queries: training "
        f"{q['train_blackbox']:,} (black box)"
        + (f" + {q['whitebox_evaluations']:,} white-box" if q["whitebox_evaluations"] else "")
        + f", certification {summ['queries']:,}; wrote {out_dir}",
        highlight=False,
        soft_wrap=True,
    )
