"""`zoattack train`: train a zoo victim and write safetensors weights plus a JSON model card.

The card records everything needed to trust and reproduce the weights: data set and sources,
architecture config, the full recipe, seed, measured test accuracy, the exact command, and the
software versions. The shipped Fashion-MNIST weights were made with this command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from zoattack.cli._common import err, fail, guarded, out, resolve_device
from zoattack.registry import Recipe


def _out_path(out_opt: Path | None, model: str, dataset: str) -> Path:
    name = f"{model}_{dataset}.safetensors"
    if out_opt is None:
        return Path("runs") / "train" / name
    if out_opt.is_dir() or not out_opt.suffix:
        return out_opt / name
    if out_opt.suffix != ".safetensors":
        raise ValueError(
            f"--out must name a .safetensors file (the card is written next to it "
            f"as .json) or a folder, got {out_opt}"
        )
    return out_opt


_Opt = typer.Option


def train_command(
    model: Annotated[
        str, _Opt("--model", "-m", help="Zoo architecture: resnet20 or small_cnn.")
    ] = "small_cnn",
    dataset: Annotated[
        str, _Opt("--dataset", "-d", help="Data set name (see `zoattack list datasets`).")
    ] = "fashion-mnist",
    epochs: Annotated[
        int | None,
        _Opt(help="Passes over the training set (default per model: resnet20 4, small_cnn 3)."),
    ] = None,
    lr: Annotated[
        float | None,
        _Opt(help="Peak learning rate (default per model: resnet20 0.1, small_cnn 1e-3)."),
    ] = None,
    batch_size: Annotated[int, _Opt(help="Training batch size.")] = 128,
    seed: Annotated[int, _Opt(help="Seeds weight init, shuffling and augmentation.")] = 0,
    device: Annotated[str, _Opt(help="auto, cpu or cuda.")] = "auto",
    out_file: Annotated[
        Path | None,
        _Opt(
            "--out",
            help="Weights file (.safetensors) or folder; the card goes next to it as .json "
            "(default: runs/train/MODEL_DATASET.safetensors).",
        ),
    ] = None,
    data_dir: Annotated[Path | None, _Opt(help="Data root (layout per data set).")] = None,
    limit: Annotated[int | None, _Opt(help="Train on the first N training images only.")] = None,
    test_limit: Annotated[
        int | None, _Opt(help="Measure accuracy on the first N test images only (default: all).")
    ] = None,
    optimizer: Annotated[
        str | None,
        _Opt(
            help="adam, or sgd with Nesterov momentum 0.9 "
            "(default per model: resnet20 sgd, small_cnn adam)."
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, _Opt(help="L2 weight decay (default per model: resnet20 5e-4, small_cnn 0).")
    ] = None,
    schedule: Annotated[str, _Opt(help="cosine (per step, to 0) or constant.")] = "cosine",
    augment: Annotated[
        str | None, _Opt(help="none, flip, crop or crop+flip (default: none).")
    ] = None,
    image_size: Annotated[int | None, _Opt(help="imagefolder only: resize to N x N.")] = None,
    threads: Annotated[
        int | None,
        _Opt(help="CPU threads (fix it to reproduce bit-identical weights across machines)."),
    ] = None,
) -> None:
    """Train a zoo victim (with a progress bar), then write safetensors weights + a JSON card."""
    _train(**locals())


@guarded
def _train(
    *,
    model: str,
    dataset: str,
    epochs: int | None,
    lr: float | None,
    batch_size: int,
    seed: int,
    device: str,
    out_file: Path | None,
    data_dir: Path | None,
    limit: int | None,
    test_limit: int | None,
    optimizer: str | None,
    weight_decay: float | None,
    schedule: str,
    augment: str | None,
    image_size: int | None,
    threads: int | None,
) -> None:
    from zoattack.data import dataset_spec, load_dataset
    from zoattack.models import MODELS, count_parameters, create_model, save_weights
    from zoattack.models.card import build_model_card, train_command_line
    from zoattack.models.training import TrainRecipe, evaluate, train_model
    from zoattack.seeding import make_generator, seed_everything

    entry = MODELS.get(model.partition(":")[0])  # adapters are named prefix:NAME
    if not entry.flags.get("trainable"):
        zoo = ", ".join(MODELS.names(trainable=True))
        raise fail(f"`zoattack train` trains zoo models ({zoo}); {model} is an adapter")
    spec = dataset_spec(dataset)
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    for flag, value in (("--limit", limit), ("--test-limit", test_limit), ("--threads", threads)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    dev = resolve_device(device)
    # What the shipped weights were trained with (the model's registry entry); flags override.
    defaults = entry.recipe or Recipe()
    recipe = TrainRecipe(
        epochs=epochs if epochs is not None else defaults.epochs,
        lr=lr if lr is not None else defaults.lr,
        batch_size=batch_size,
        optimizer=(optimizer or defaults.optimizer).lower(),
        weight_decay=weight_decay if weight_decay is not None else defaults.weight_decay,
        schedule=schedule.lower(),
        augment=(augment or defaults.augment).lower(),
        crop_padding=4 if (spec.size or (0, 0))[0] >= 32 else 2,
    ).validate()
    path = _out_path(out_file, entry.name, spec.name)
    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)  # only for third-party code; ours draws from `gen`
    gen = make_generator(seed)

    options = {"size": image_size} if image_size is not None else {}
    root = str(data_dir) if data_dir is not None else None
    train_ds = load_dataset(spec.name, split="train", data_dir=root, limit=limit, **options)
    test_ds = load_dataset(spec.name, split="test", data_dir=root, limit=test_limit, **options)
    if train_ds.image_shape != test_ds.image_shape:
        raise ValueError(
            f"train images are {train_ds.image_shape}, test images "
            f"{test_ds.image_shape}; pass --image-size"
        )
    net = create_model(entry.name, dataset=train_ds, generator=gen, device="cpu")
    err.print(
        f"training {entry.name} ({count_parameters(net):,} params) on {len(train_ds):,} "
        f"{spec.name} images for {recipe.epochs} epoch(s) on {dev}, "
        f"{torch.get_num_threads()} CPU thread(s)",
        highlight=False,
    )

    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with progress:
        task = progress.add_task("train", total=None, epoch=1, epochs=recipe.epochs, loss="-")

        def on_step(ep: int, step: int, steps: int, loss: float) -> None:
            progress.update(
                task,
                total=steps * recipe.epochs,
                completed=(ep - 1) * steps + step,
                epoch=ep,
                loss=f"{loss:.4f}",
            )
            if not err.is_terminal and step % max(1, steps // 10) == 0 and step < steps:
                # No live bar when stderr is a file (nohup, CI): leave a trail instead.
                progress.console.print(
                    f"epoch {ep} step {step}/{steps} loss {loss:.4f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    highlight=False,
                )

        def on_epoch(row: dict[str, float]) -> None:
            progress.console.print(
                f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, train accuracy "
                f"{row['train_accuracy']:.2%} ({row['seconds']:.0f} s)",
                highlight=False,
            )

        t0 = time.perf_counter()
        result = train_model(
            net,
            train_ds,
            recipe=recipe,
            generator=gen,
            device=dev,
            test=test_ds,
            on_step=on_step,
            on_epoch=on_epoch,
        )
    assert result.test_accuracy is not None
    first = None
    if len(test_ds) > 1000:  # the bundled Fashion-MNIST subset is the first 1,000 test images
        head = test_ds.head(1000)
        first = evaluate(net, head.images, head.labels, device=dev)

    card = build_model_card(
        model=entry.name,
        dataset=spec.name,
        net=net,
        image_shape=train_ds.image_shape,
        classes=train_ds.classes,
        recipe=recipe.as_dict(),
        train_examples=len(train_ds),
        train_source=train_ds.source,
        seed=seed,
        test_accuracy=result.test_accuracy,
        test_examples=len(test_ds),
        test_source=test_ds.source,
        test_accuracy_first_1000=first,
        history=result.history,
        train_seconds=time.perf_counter() - t0,
        device=str(dev),
        command=train_command_line(
            entry.name,
            spec.name,
            recipe.as_dict(),
            seed,
            limit=limit,
            test_limit=test_limit,
            image_size=image_size,
            threads=threads,
        ),
    )
    wpath, cpath = save_weights(net.cpu(), path, card)
    out.print(
        f"test accuracy {result.test_accuracy:.2%} on {len(test_ds):,} {spec.name} test "
        f"images; wrote {wpath} and {cpath}",
        highlight=False,
        soft_wrap=True,
    )
