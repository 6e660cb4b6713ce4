"""Model cards: the JSON record written next to trained weights (`zoattack train`).

A card holds everything needed to trust and reproduce the weights: data set and sources,
architecture config (and paper), the full recipe, the seed, measured test accuracy, the exact
command that reproduces them, and the software versions.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

PAPERS = {
    "resnet20": "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016",
}


def train_command_line(
    model: str,
    dataset: str,
    recipe: Mapping[str, Any],
    seed: int,
    *,
    limit: int | None = None,
    test_limit: int | None = None,
    image_size: int | None = None,
    threads: int | None = None,
) -> str:
    """The `zoattack train` command that reproduces a recipe (every recipe field explicit)."""
    return (
        f"zoattack train --model {model} --dataset {dataset} --epochs "
        f"{recipe['epochs']} --lr {recipe['lr']:g} --batch-size {recipe['batch_size']} "
        f"--optimizer {recipe['optimizer']} --weight-decay {recipe['weight_decay']:g} "
        f"--schedule {recipe['schedule']} --augment {recipe['augment']} --seed {seed}"
        + (f" --limit {limit}" if limit is not None else "")
        + (f" --test-limit {test_limit}" if test_limit is not None else "")
        + (f" --image-size {image_size}" if image_size is not None else "")
        + (f" --threads {threads}" if threads is not None else "")
    )


def build_model_card(
    *,
    model: str,
    dataset: str,
    net: nn.Module,
    image_shape: Sequence[int],
    classes: Sequence[str],
    recipe: Mapping[str, Any],
    train_examples: int,
    train_source: str,
    seed: int,
    test_accuracy: float,
    test_examples: int,
    test_source: str,
    history: Sequence[Mapping[str, Any]],
    train_seconds: float,
    device: str,
    command: str,
    test_accuracy_first_1000: float | None = None,
    version: str | None = None,
    date: str | None = None,
) -> dict[str, Any]:
    """The card of a trained zoo model ``net`` (``net.config()`` gives its architecture).

    ``version`` defaults to this zoattack's, ``date`` to now (UTC); the thread count and
    torch version are read from the running process.
    """
    from zoattack._version import __version__
    from zoattack.models import count_parameters

    config = net.config()  # type: ignore[operator]
    return {
        "model": model,
        "dataset": dataset,
        "architecture": {
            "class": type(net).__name__,
            "config": config,
            **({"paper": PAPERS[model]} if model in PAPERS else {}),
        },
        "input": {
            "shape": list(image_shape),
            "range": [0.0, 1.0],
            "normalization": "inside the model (first layer)",
        },
        "classes": list(classes),
        "recipe": {
            **dict(recipe),
            "train_examples": train_examples,
            "train_source": train_source,
        },
        "seed": seed,
        "test_accuracy": round(test_accuracy, 5),
        "test_examples": test_examples,
        "test_source": test_source,
        **(
            {"test_accuracy_first_1000": round(test_accuracy_first_1000, 5)}
            if test_accuracy_first_1000 is not None
            else {}
        ),
        "history": [dict(h) for h in history],
        "param_count": count_parameters(net),
        "train_seconds": round(train_seconds, 1),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "command": command,
        "torch_version": torch.__version__,
        "zoattack_version": version if version is not None else __version__,
        "date": date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
