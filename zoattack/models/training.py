"""Supervised training for zoo victims: small, deterministic, and honest about the recipe.

Everything random (shuffling, augmentation) draws from one ``torch.Generator``; model weights are
initialised from it too (see :mod:`zoattack.models.zoo`). On CPU, the same seed, data, recipe and
thread count give bit-identical weights. Data are in-memory tensors, so there is no DataLoader
and no worker processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoattack.data import ImageDataset

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip")


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

    def validate(self) -> TrainRecipe:
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
        return self

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
        return d


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float | None = None
    seconds: float = 0.0


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
) -> TrainResult:
    """Train ``model`` in place on ``train``; report test accuracy on ``test`` at the end.

    Raises:
        ValueError: a bad recipe, or a non-finite loss (divergence: lower the learning rate).
    """
    recipe.validate()
    device = torch.device(device)
    # channels_last makes CPU convolutions ~25% faster here; state dicts saved later are
    # made contiguous again by save_weights.
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
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
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps):
            idx = perm[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = augment_batch(train.images[idx], recipe.augment, recipe.crop_padding, generator)
            x, y = x.to(device, memory_format=fmt), train.labels[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
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
            "train_accuracy": round(correct / max(1, seen), 5),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    model.to(memory_format=torch.contiguous_format).eval()
    if test is not None:
        result.test_accuracy = evaluate(model, test.images, test.labels, device=device)
    result.seconds = time.perf_counter() - start
    return result
