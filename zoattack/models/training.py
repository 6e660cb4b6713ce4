"""Supervised training for zoo victims: small, deterministic, and honest about the recipe.

Everything random (shuffling, augmentation) draws from one ``torch.Generator``; model weights are
initialised from it too (see :mod:`zoattack.models.zoo`). On CPU, the same seed, data, recipe and
thread count give bit-identical weights. Data are in-memory tensors, so there is no DataLoader
and no worker processes.

Adversarial training (``adv_method``): PGD training (Madry et al. ICLR 2018) minimises the
cross-entropy on PGD examples found inside the eps-ball of each training image; TRADES (Zhang et
al. ICML 2019) minimises ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with ``x'`` maximising the
KL term. Examples are generated with the model in eval mode (BatchNorm statistics are not
updated by the attack's passes). Training can be resumed per epoch from a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoattack.attacks.pgd import PGD, check_threat, pgd_examples, trades_examples
from zoattack.data import ImageDataset

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip")
ADV_METHODS = ("none", "pgd", "trades")
ADV_PAPERS = {
    "pgd": "Madry, Makelov, Schmidt, Tsipras, Vladu. Towards Deep Learning Models Resistant to "
    "Adversarial Attacks. ICLR 2018",
    "trades": "Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan. Theoretically Principled Trade-off "
    "between Robustness and Accuracy. ICML 2019",
}


@dataclass
class TrainRecipe:
    """Hyperparameters; :meth:`as_dict` goes into the model card verbatim.

    ``augment``: ``flip`` = random horizontal flips, ``crop`` = random translations by up to
    ``crop_padding`` pixels (zero padding), ``crop+flip`` = both. ``schedule="cosine"`` decays
    the learning rate per step to 0 over all epochs.
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment: str = "none"
    crop_padding: int = 2
    label_smoothing: float = 0.0
    adv_method: str = "none"
    adv_norm: str = "linf"
    adv_eps: float = 0.0
    adv_steps: int = 7
    adv_step_size: float | None = None
    trades_beta: float = 6.0

    @property
    def adversarial(self) -> bool:
        return self.adv_method != "none"

    def validate(self, image_numel: int | None = None) -> TrainRecipe:
        """Raise ValueError naming the flag of the first bad field; ``image_numel`` (values per
        image) bounds an L2 ``adv_eps`` by the diagonal of the ``[0, 1]`` box."""
        self._validate_plain()
        if self.adv_method not in ADV_METHODS:
            raise ValueError(
                f"--adv-method must be one of {', '.join(ADV_METHODS)}, got {self.adv_method!r}"
            )
        if not self.adversarial:
            return self
        if self.adv_norm not in ("linf", "l2"):
            raise ValueError(f"--adv-norm must be linf or l2, got {self.adv_norm!r}")
        if not (self.adv_eps > 0 and math.isfinite(self.adv_eps)):
            raise ValueError(f"--adv-eps must be a finite number > 0, got {self.adv_eps}")
        try:
            check_threat(self.adv_norm, self.adv_eps, image_numel)
        except ValueError as exc:
            raise ValueError(f"--adv-eps: {exc}") from None
        if self.adv_steps < 1:
            raise ValueError(f"--adv-steps must be >= 1, got {self.adv_steps}")
        if self.adv_step_size is not None and not (
            self.adv_step_size > 0 and math.isfinite(self.adv_step_size)
        ):
            raise ValueError(f"--adv-step-size must be a number > 0, got {self.adv_step_size}")
        if not (self.trades_beta > 0 and math.isfinite(self.trades_beta)):
            raise ValueError(f"--trades-beta must be a number > 0, got {self.trades_beta}")
        return self

    @property
    def adv_alpha(self) -> float:
        """The attack's step size: given, else 2.5 eps / steps (Madry et al.)."""
        if self.adv_step_size is not None:
            return self.adv_step_size
        return 2.5 * self.adv_eps / self.adv_steps

    def _validate_plain(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.batch_size < 2:
            raise ValueError(
                f"--batch-size must be >= 2 (BatchNorm needs 2), got {self.batch_size}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.optimizer != "sgd":
            d.pop("momentum")
            d.pop("nesterov")
        if "crop" not in self.augment:
            d.pop("crop_padding")
        d["loss"] = "cross-entropy" + (
            f" (label smoothing {self.label_smoothing})" if self.label_smoothing else ""
        )
        d.pop("label_smoothing")
        for k in ("adv_method", "adv_norm", "adv_eps", "adv_steps", "adv_step_size", "trades_beta"):
            d.pop(k)
        if self.adversarial:
            d["adversarial"] = {
                "method": self.adv_method,
                "norm": self.adv_norm,
                "eps": self.adv_eps,
                "steps": self.adv_steps,
                "step_size": round(self.adv_alpha, 6),
                "start": "uniform random in the ball"
                if self.adv_method == "pgd"
                else "x + 0.001 N(0, I)",
                "inner_loss": "cross-entropy" if self.adv_method == "pgd" else "KL(f(x) || f(x'))",
                **({"beta": self.trades_beta} if self.adv_method == "trades" else {}),
                "paper": ADV_PAPERS[self.adv_method],
            }
            d["loss"] = (
                "cross-entropy on PGD examples"
                if self.adv_method == "pgd"
                else f"TRADES: CE(f(x), y) + {self.trades_beta:g} KL(f(x) || f(x'))"
            )
        return d


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float | None = None
    seconds: float = 0.0
    resumed_from_epoch: int = 0


StepCallback = Callable[[int, int, int, float], None]
"""``(epoch, step, steps_per_epoch, loss)`` after every optimizer step (1-based epoch/step)."""


def augment_batch(x: Tensor, mode: str, padding: int, generator: torch.Generator) -> Tensor:
    """Random flips / translations drawn from ``generator`` (CPU tensors)."""
    if mode == "none":
        return x
    if "flip" in mode:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if "crop" in mode and padding > 0:
        n, _, h, w = x.shape
        padded = F.pad(x, (padding,) * 4)
        offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy in [0, 1]; the model's train/eval mode is restored afterwards."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            pred = model(x).argmax(1).cpu()
            correct += int((pred == labels[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(images))


def _optimizer(model: nn.Module, r: TrainRecipe) -> torch.optim.Optimizer:
    if r.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=r.lr,
            momentum=r.momentum,
            nesterov=r.nesterov and r.momentum > 0,
            weight_decay=r.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)


def robust_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    norm: str,
    eps: float,
    steps: int = 20,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> float:
    """Accuracy under white-box PGD (margin loss, random start): the share of images the model
    classifies correctly and PGD does not fool. An upper bound on true robust accuracy."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    attack = PGD(norm, eps, steps=steps, restarts=restarts, loss="margin")
    robust = 0
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            y = labels[i : i + batch_size].to(device)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            if ok.any():
                res = attack.perturb(model, x[ok], y[ok], generator=generator)
                robust += int((~res.success).sum())
    finally:
        model.train(was_training)
    return robust / max(1, len(images))


def _recipe_key(recipe: TrainRecipe) -> str:
    return json.dumps(asdict(recipe), sort_keys=True)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a crash while writing leaves the previous epoch's checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_model(
    model: nn.Module,
    train: ImageDataset,
    *,
    recipe: TrainRecipe,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    test: ImageDataset | None = None,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``train``; report test accuracy on ``test`` at the end.

    ``checkpoint``: after every epoch, the model, optimizer, schedule, generator state and
    history are written there; with ``resume`` an existing checkpoint of the same recipe is
    loaded and training continues at the next epoch, so the final weights equal those of an
    uninterrupted run (on CPU, same thread count).

    Raises:
        ValueError: a bad recipe, a checkpoint of another recipe, or a non-finite loss
            (divergence: lower the learning rate).
    """
    recipe.validate(train.images[0].numel() if len(train) else None)
    device = torch.device(device)
    # channels_last makes CPU convolutions ~25% faster here; state dicts saved later are
    # made contiguous again by save_weights.
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    opt = _optimizer(model, recipe)
    n = len(train)
    steps = n // recipe.batch_size + (1 if n % recipe.batch_size > 1 else 0)  # no batch of 1
    total = max(1, steps * recipe.epochs)
    if recipe.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
        )
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    result = TrainResult()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    first_epoch = 1
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("recipe") != _recipe_key(recipe) or state.get("train_examples") != n:
            raise ValueError(
                f"--resume: {ckpt} was written by another recipe or training set; "
                "repeat that run's options or delete the checkpoint"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        result.history = [dict(r) for r in state["history"]]
        first_epoch = int(state["epoch"]) + 1
        result.resumed_from_epoch = int(state["epoch"])
    start = time.perf_counter()
    for epoch in range(first_epoch, recipe.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps):
            idx = perm[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = augment_batch(train.images[idx], recipe.augment, recipe.crop_padding, generator)
            x, y = x.to(device, memory_format=fmt), train.labels[idx].to(device)
            loss, logits = _batch_loss(model, x, y, recipe, generator)
            if not torch.isfinite(loss):
                raise ValueError(
                    f"training diverged (loss {loss.item()}) at epoch {epoch} step "
                    f"{step + 1}; lower --lr (now {recipe.lr})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = len(idx)
            loss_sum += loss.item() * b
            correct += int((logits.argmax(1) == y).sum())
            seen += b
            if on_step is not None:
                on_step(epoch, step + 1, steps, loss.item())
        row = {
            "epoch": epoch,
            "train_loss": round(loss_sum / max(1, seen), 5),
            # Adversarial training: accuracy on the training-time adversarial examples (PGD)
            # or on the clean images (TRADES, whose first term is the clean loss).
            "train_accuracy": round(correct / max(1, seen), 5),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        result.history.append(row)
        if ckpt is not None:
            _save_checkpoint(
                ckpt,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": generator.get_state(),
                    "history": result.history,
                    "recipe": _recipe_key(recipe),
                    "train_examples": n,
                },
            )
        if on_epoch is not None:
            on_epoch(row)
    model.to(memory_format=torch.contiguous_format).eval()
    if test is not None:
        result.test_accuracy = evaluate(model, test.images, test.labels, device=device)
    result.seconds = time.perf_counter() - start
    return result


def _batch_loss(
    model: nn.Module, x: Tensor, y: Tensor, recipe: TrainRecipe, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The training loss of one batch and the logits its accuracy is read from."""
    if not recipe.adversarial:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing), logits
    model.eval()  # the attack's passes must not move BatchNorm statistics
    try:
        if recipe.adv_method == "pgd":
            x_adv = pgd_examples(
                model,
                x,
                y,
                norm=recipe.adv_norm,
                eps=recipe.adv_eps,
                steps=recipe.adv_steps,
                step_size=recipe.adv_alpha,
                generator=generator,
            )
        else:
            x_adv = trades_examples(
                model,
                x,
                norm=recipe.adv_norm,
                eps=recipe.adv_eps,
                steps=recipe.adv_steps,
                step_size=recipe.adv_alpha,
                generator=generator,
            )
    finally:
        model.train()
    if recipe.adv_method == "pgd":
        logits = model(x_adv)
        return F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing), logits
    logits = model(x)
    kl = F.kl_div(
        torch.log_softmax(model(x_adv), dim=1), torch.softmax(logits, dim=1), reduction="batchmean"
    )
    ce = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
    return ce + recipe.trades_beta * kl, logits
