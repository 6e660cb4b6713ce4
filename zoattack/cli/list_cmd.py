"""`zoattack list KIND`: registry contents as a Rich table (or Markdown)."""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import typer
from rich.table import Table

from zoattack.cli._common import fail, out
from zoattack.registry import Registry


def _registries() -> dict[str, Registry[Any]]:
    from zoattack.data import DATASETS
    from zoattack.estimators import ESTIMATORS
    from zoattack.functions import FUNCTIONS
    from zoattack.models import MODELS
    from zoattack.optim import OPTIMIZERS

    return {
        "estimators": ESTIMATORS,
        "optimizers": OPTIMIZERS,
        "functions": FUNCTIONS,
        "models": MODELS,
        "datasets": DATASETS,
    }


def _flags(flags: dict[str, Any]) -> str:
    return ", ".join(k if v is True else f"{k}={v}" for k, v in flags.items() if v is not False)


def card_accuracy(name: str, pretrained: object) -> str:
    """Clean (and PGD robust) accuracy from the cards of a zoo model's shipped weights."""
    if not pretrained or not isinstance(pretrained, str):
        return ""
    from zoattack.models.weights import load_card

    parts = []
    for ds in pretrained.split(","):
        try:
            card = load_card(name, ds)
        except FileNotFoundError:
            continue
        text = f"{ds}: clean {card['test_accuracy']:.1%}"
        rob = card.get("robust_accuracy")
        if rob:
            steps = rob.get("steps") or "".join(
                itertools.takewhile(str.isdigit, rob.get("attack", "").partition("PGD-")[2])
            )
            text += (
                f", robust {rob['accuracy']:.1%} (PGD-{steps} "
                f"{rob['norm']} {rob['eps']:g}, {rob['examples']:,} images)"
            )
        parts.append(text)
    return "; ".join(parts)


def list_command(
    kind: Annotated[
        str,
        typer.Argument(help="What to list: estimators, optimizers, functions, models, datasets."),
    ],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
) -> None:
    """List registered names with their descriptions."""
    regs = _registries()
    key = kind.lower().rstrip("s") + "s"
    if key not in regs:
        raise fail(f"cannot list '{kind}'; choose one of: {', '.join(regs)}")
    reg = regs[key]
    cols = ["name", "aliases", "description", "flags"]
    rows = [(e.name, ", ".join(e.aliases), e.description, _flags(e.flags)) for e in reg]
    if key == "models":  # what the shipped weights measured, from their cards
        cols.append("accuracy (card)")
        rows = [(*r, card_accuracy(e.name, e.flags.get("pretrained"))) for r, e in zip(rows, reg)]
    if markdown:
        out.print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), highlight=False)
        for r in rows:
            out.print(
                "| " + " | ".join(f"`{r[0]}`" if i == 0 else r[i] for i in range(len(cols))) + " |",
                highlight=False,
                soft_wrap=True,
            )
        return
    table = Table(title=f"zoattack {key}")
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    out.print(table)
