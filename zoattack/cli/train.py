"""`zoattack train`: train a zoo victim and write safetensors weights plus a JSON model card.

The card records everything needed to trust and reproduce the weights: data set and sources,
architecture config, the full recipe, seed, measured test accuracy, the exact command, and the
software versions. The shipped Fashion-MNIST weights were made with this command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

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

P_ADV = "Adversarial training"


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


def _check_out(path: Path, ckpt: Path, *, resume: bool, overwrite: bool) -> None:
    """Before anything is loaded: trained weights and an interrupted training's checkpoint are
    replaced only with --overwrite; the checkpoint is continued with --resume."""
    from zoattack.models.weights import card_path
    from zoattack.results.folder import refuse_replacing

    if path.exists() and not path.is_file():
        raise ValueError(f"--out {path} is a folder; name a .safetensors file or its folder")
    if ckpt.is_file():
        what = f"the checkpoint of an interrupted training ({ckpt.name})"
        refuse_replacing(path.parent, what, resume=resume, overwrite=overwrite)
    elif resume:
        if overwrite:
            refuse_replacing(path.parent, "a training", resume=True, overwrite=True)
        raise ValueError(f"--resume: no checkpoint at {ckpt}; run without --resume first")
    done = [p.name for p in (path, card_path(path)) if p.exists()]
    if done and not ckpt.is_file():
        what = f"trained weights ({', '.join(done)})"
        refuse_replacing(path.parent, what, resume=False, overwrite=overwrite, can_resume=False)


def _check_training_memory(model: str, spec: Any, recipe: Any) -> None:
    """Estimate a training step from the architecture's shapes (built on the meta device,
    nothing allocated) and refuse one past the memory limit before any data is loaded."""
    if spec.channels is None or spec.size is None:  # imagefolder: shape known from the files
        return
    from zoattack.models import create_model
    from zoattack.models.fit import check_memory, training_bytes
    from zoattack.models.zoo import skeleton

    shape = (spec.channels, *spec.size)
    with skeleton():
        shell = create_model(model, dataset=spec.name, device="meta")
    check_memory(
        f"training {model} on {spec.name} with --batch-size {recipe.batch_size}",
        training_bytes(shell, shape, recipe.batch_size, recipe.optimizer),
        hint="pass a smaller --batch-size or a smaller view of the data set",
    )


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
    adv_method: Annotated[
        str | None,
        _Opt(
            help="Adversarial training: pgd (Madry et al.) or trades (Zhang et al.); "
            "default pgd when --adv-eps is given, else none.",
            rich_help_panel=P_ADV,
        ),
    ] = None,
    adv_eps: Annotated[
        float | None,
        _Opt(help="Radius of the training attack (e.g. 0.1 linf).", rich_help_panel=P_ADV),
    ] = None,
    adv_steps: Annotated[
        int, _Opt(help="Steps of the training attack.", rich_help_panel=P_ADV)
    ] = 7,
    adv_norm: Annotated[str, _Opt(help="linf or l2.", rich_help_panel=P_ADV)] = "linf",
    adv_step_size: Annotated[
        float | None,
        _Opt(help="Step of the training attack (default 2.5 eps / steps).", rich_help_panel=P_ADV),
    ] = None,
    trades_beta: Annotated[
        float, _Opt(help="TRADES: weight of the KL term.", rich_help_panel=P_ADV)
    ] = 6.0,
    robust_eval_images: Annotated[
        int,
        _Opt(
            help="Measure PGD robust accuracy on the first N test images (0: skip).",
            rich_help_panel=P_ADV,
        ),
    ] = 1000,
    robust_eval_steps: Annotated[
        int, _Opt(help="Steps of that PGD evaluation (1 restart).", rich_help_panel=P_ADV)
    ] = 20,
    resume: Annotated[
        bool,
        _Opt(
            "--resume",
            help="Continue from the per-epoch checkpoint next to --out (FILE.ckpt.pt).",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        _Opt(
            "--overwrite",
            help="Replace the weights and card already at --out, or an interrupted training's "
            "checkpoint (otherwise refused).",
        ),
    ] = False,
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
    adv_method: str | None = None,
    adv_eps: float | None = None,
    adv_steps: int = 7,
    adv_norm: str = "linf",
    adv_step_size: float | None = None,
    trades_beta: float = 6.0,
    robust_eval_images: int = 1000,
    robust_eval_steps: int = 20,
    resume: bool = False,
    overwrite: bool = False,
) -> None:
    import torch

    from zoattack.data import dataset_spec, load_dataset
    from zoattack.models import MODELS, count_parameters, create_model, save_weights
    from zoattack.models.card import build_model_card, train_command_line
    from zoattack.models.training import TrainRecipe, evaluate, robust_accuracy, train_model
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
    # A robust zoo entry (e.g. small_cnn_robust) names its threat model: the default recipe.
    robust = entry.flags.get("robust")
    if adv_eps is None and isinstance(robust, str):  # "NORM:EPS"
        adv_norm, _, eps_text = robust.partition(":")
        adv_eps = float(eps_text)
    if adv_method is None:
        adv_method = "pgd" if adv_eps is not None else "none"
    adv_method = adv_method.lower()
    if adv_method != "none" and adv_eps is None:
        raise ValueError(f"--adv-method {adv_method} needs --adv-eps (e.g. 0.1 for linf)")
    if adv_method == "none" and adv_eps is not None:
        raise ValueError("--adv-eps is for adversarial training; add --adv-method pgd or trades")
    if robust_eval_images < 0 or robust_eval_steps < 1:
        raise ValueError(
            "--robust-eval-images must be >= 0 and --robust-eval-steps >= 1, got "
            f"{robust_eval_images} and {robust_eval_steps}"
        )
    # What the shipped weights were trained with (the model's registry entry, else its
    # architecture's, e.g. small_cnn_robust trains like small_cnn); flags override.
    arch = entry.flags.get("arch")
    defaults = entry.recipe or (MODELS.get(str(arch)).recipe if arch else None) or Recipe()
    recipe = TrainRecipe(
        epochs=epochs if epochs is not None else defaults.epochs,
        lr=lr if lr is not None else defaults.lr,
        batch_size=batch_size,
        optimizer=(optimizer or defaults.optimizer).lower(),
        weight_decay=weight_decay if weight_decay is not None else defaults.weight_decay,
        schedule=schedule.lower(),
        augment=(augment or defaults.augment).lower(),
        crop_padding=4 if (spec.size or (0, 0))[0] >= 32 else 2,
        adv_method=adv_method,
        adv_norm=adv_norm.lower(),
        adv_eps=adv_eps if adv_eps is not None else 0.0,
        adv_steps=adv_steps,
        adv_step_size=adv_step_size,
        trades_beta=trades_beta,
    ).validate()
    path = _out_path(out_file, entry.name, spec.name)
    numel = 1
    for v in (spec.channels or 1, *(spec.size or (1, 1))):
        numel *= v
    recipe.validate(numel if spec.size is not None else None)
    ckpt = path.with_name(path.stem + ".ckpt.pt")
    _check_out(path, ckpt, resume=resume, overwrite=overwrite)
    _check_training_memory(entry.name, spec, recipe)
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
        f"{torch.get_num_threads()} CPU thread(s)"
        + (
            f", {recipe.adv_method.upper()} adversarial training ({recipe.adv_norm} eps "
            f"{recipe.adv_eps:g}, {recipe.adv_steps} steps)"
            if recipe.adversarial
            else ""
        ),
        highlight=False,
    )
    if overwrite:  # checked above: the user asked to start again
        ckpt.unlink(missing_ok=True)

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
            checkpoint=ckpt,
            resume=resume,
        )
    assert result.test_accuracy is not None
    robust_block: dict[str, Any] | None = None
    if recipe.adversarial and robust_eval_images > 0:
        head = test_ds.head(min(robust_eval_images, len(test_ds)))
        err.print(
            f"measuring PGD-{robust_eval_steps} robust accuracy on {len(head):,} test images",
            highlight=False,
        )
        t_rob = time.perf_counter()
        rob = robust_accuracy(
            net,
            head.images,
            head.labels,
            norm=recipe.adv_norm,
            eps=recipe.adv_eps,
            steps=robust_eval_steps,
            generator=make_generator(seed),
            device=dev,
        )
        robust_block = {
            "accuracy": round(rob, 5),
            "clean_accuracy": round(evaluate(net, head.images, head.labels, device=dev), 5),
            "norm": recipe.adv_norm,
            "eps": recipe.adv_eps,
            "steps": robust_eval_steps,
            "restarts": 1,
            "attack": f"white-box PGD-{robust_eval_steps}, 1 random restart, margin loss, "
            f"step 2.5 eps / steps (zoattack.attacks.pgd.PGD, seed {seed})",
            "examples": len(head),
            "source": f"first {len(head):,} test images ({test_ds.source})",
            "seconds": round(time.perf_counter() - t_rob, 1),
            "note": "an upper bound on true robust accuracy; `zoattack eval` with more "
            "steps and restarts gives a tighter one",
        }
    first = None
    if len(test_ds) > 1000:  # the bundled Fashion-MNIST subset is the first 1,000 test images
        head = test_ds.head(1000)
        first = evaluate(net, head.images, head.labels, device=dev)

    command = train_command_line(
        entry.name,
        spec.name,
        recipe.as_dict(),
        seed,
        limit=limit,
        test_limit=test_limit,
        image_size=image_size,
        threads=threads,
    )
    if recipe.adversarial:
        command += (
            f" --adv-method {recipe.adv_method} --adv-norm {recipe.adv_norm} --adv-eps "
            f"{recipe.adv_eps:g} --adv-steps {recipe.adv_steps}"
            + (f" --adv-step-size {adv_step_size:g}" if adv_step_size is not None else "")
            + (f" --trades-beta {recipe.trades_beta:g}" if recipe.adv_method == "trades" else "")
            + f" --robust-eval-images {robust_eval_images} --robust-eval-steps "
            f"{robust_eval_steps}"
        )
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
        command=command,
    )
    if robust_block is not None:
        card["robust_accuracy"] = robust_block
    if result.resumed_from_epoch:
        card["resumed_from_epoch"] = result.resumed_from_epoch
    wpath, cpath = save_weights(net.cpu(), path, card)
    ckpt.unlink(missing_ok=True)  # the weights and card now hold everything
    rob_text = (
        f", PGD robust accuracy {robust_block['accuracy']:.2%} ({recipe.adv_norm} eps "
        f"{recipe.adv_eps:g}, first {robust_block['examples']:,} test images)"
        if robust_block is not None
        else ""
    )
    out.print(
        f"test accuracy {result.test_accuracy:.2%} on {len(test_ds):,} {spec.name} test "
        f"images{rob_text}; wrote {wpath} and {cpath}",
        highlight=False,
        soft_wrap=True,
    )
