"""`zoattack list KIND`: registry contents as a Rich table (or Markdown).

The registries live in modules that import torch (each entry is a class), so `list` prints from
``catalog.json``, the same tables computed once from the live registries and shipped in the
package: `zoattack list` then answers in a fraction of a second. ``tests/cli/test_catalog.py``
fails when the file no longer matches the registries; rewrite it with
``python -m zoattack.cli.list_cmd --write``.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from zoattack.cli._common import fail, out
from zoattack.norms import NORMS
from zoattack.registry import Entry, Registry, Tuned

CATALOG = Path(__file__).with_name("catalog.json")

# What `zoattack list` (no KIND) shows, in this order.
KINDS = {
    "attacks": "every attack `zoattack run` can run and what it needs of the model",
    "estimators": "gradient estimators (--estimator)",
    "optimizers": "score-based update rules (--optimizer); --defaults: tuned settings",
    "functions": "synthetic test functions for `zoattack optimize`",
    "models": "zoo models and adapters (--model); --defaults: training recipes",
    "datasets": "data sets (--dataset)",
}


def _registries() -> dict[str, Registry[Any]]:
    from zoattack.attacks.hardlabel import DECISION_ATTACKS
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
        "attacks": DECISION_ATTACKS,  # with the score-based rules: see attack_rows
    }


def attack_rows() -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Every name `--attack` takes (`zoattack run`, plans, ``zoattack.attack``): what it needs
    of the model (scores or labels only), its norms and its defaults."""
    from zoattack.attacks.hardlabel import DECISION_ATTACKS, create_decision_attack
    from zoattack.jobs.hardlabel import DEFAULT_ATTACK
    from zoattack.jobs.resolve import ZO_DEFAULT_RULE, gradient_rules
    from zoattack.optim import OPTIMIZERS

    rows: list[tuple[str, ...]] = []
    for e in OPTIMIZERS:
        if not e.flags.get("search"):
            continue
        norms = e.flags.get("norms") or NORMS
        radius = [
            f"{n}: radius {e.tuned(n).lr:g} eps"
            + (" (default attack)" if e.tuned(n).default else "")
            for n in norms
            if e.tuned(n).lr is not None
        ]
        rows.append(
            (
                e.name,
                f"--attack {e.name}",
                "scores",
                ", ".join(norms),
                "; ".join(radius),
                e.description,
            )
        )
    rules = gradient_rules()
    rows.append(
        (
            "zo",
            "--attack zo --optimizer RULE [--estimator EST]",
            "scores",
            ", ".join(NORMS),
            f"rule {ZO_DEFAULT_RULE}; each rule's estimator, lr, mu and subspace per norm: "
            "`zoattack list optimizers --defaults`",
            "a core update rule x gradient estimator; rules: "
            + ", ".join(rules)
            + " (--optimizer RULE alone means --attack zo)",
        )
    )
    from zoattack.attacks.surrogates import SURROGATE_ATTACKS

    for e in SURROGATE_ATTACKS:
        rows.append(
            (
                e.name,
                f"--attack {e.name} --surrogates M1,M2",
                "scores + local surrogate models",
                ", ".join(e.flags.get("norms") or NORMS),
                str(e.flags.get("defaults", "")),
                e.description,
            )
        )
    for d in DECISION_ATTACKS:
        norms = d.flags.get("norms") or NORMS
        opts = {
            k: v
            for k, v in vars(create_decision_attack(d.name)).items()
            if not k.startswith("_") and v is not None
        }
        shown = "; ".join(
            f"{k} {v}" if not isinstance(v, dict) else ", ".join(f"{a} {b}" for a, b in v.items())
            for k, v in opts.items()
        )
        rows.append(
            (d.name, f"--attack {d.name}", "labels only", ", ".join(norms), shown, d.description)
        )
    rows.append(
        (
            "auto",
            "--attack auto",
            "labels only",
            ", ".join(NORMS),
            "; ".join(f"{n}: {a}" for n, a in DEFAULT_ATTACK.items()),
            "the hard-label attack benchmarks/hardlabel.py found best for the norm",
        )
    )
    return ("name", "option", "needs", "norms", "defaults", "description"), rows


def _flags(flags: dict[str, Any]) -> str:
    return ", ".join(k if v is True else f"{k}={v}" for k, v in flags.items() if v is not False)


TUNED_COLUMNS = ("lr", "subspace", "estimator", "mu", "momentum", "difference")


def _value(value: Any, of_eps: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g} eps" if of_eps else f"{value:g}"
    return str(value)


def paper_estimator(entry: Entry[Any]) -> str | None:
    """The estimator the rule's paper pairs it with (None for estimator-free search rules)."""
    if entry.flags.get("search"):
        return None
    return getattr(entry.factory, "default_estimator", None)


def _estimator_cell(entry: Entry[Any], estimator: str | None) -> str:
    """``lizo*`` (the paper's, marked), or ``block_sign (paper: sphere)`` for a swap."""
    paper = paper_estimator(entry)
    if paper is None:
        return estimator or ""
    if estimator is None or estimator == paper:
        return f"{paper}*"
    return f"{estimator} (paper: {paper})"


def _tuned_row(entry: Entry[Any], setting: str, tuned: Tuned, of_eps: bool) -> tuple[str, ...]:
    cells = [_value(getattr(tuned, c), of_eps and c in ("lr", "mu")) for c in TUNED_COLUMNS]
    cells[TUNED_COLUMNS.index("estimator")] = _estimator_cell(entry, tuned.estimator)
    return (entry.name, setting, *cells, "yes" if tuned.default else "")


def default_rows(kind: str, reg: Registry[Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows of ``zoattack list KIND --defaults``: per rule and norm (lr and mu as
    fractions of eps) plus the synthetic-function settings, or per model its training recipe."""
    if kind == "optimizers":
        header: tuple[str, ...] = ("name", "setting", *TUNED_COLUMNS, "default")
        rows: list[tuple[str, ...]] = []
        for e in reg:
            for norm in NORMS:
                if norm in e.norm_defaults:
                    rows.append(_tuned_row(e, norm, e.norm_defaults[norm], True))
            if e.optimize_defaults is not None:
                rows.append(_tuned_row(e, "optimize", e.optimize_defaults, False))
        # Columns no rule sets (e.g. momentum today) would only widen the table.
        keep = [i for i in range(len(header)) if i < 2 or any(r[i] for r in rows)]
        return tuple(header[i] for i in keep), [tuple(r[i] for i in keep) for r in rows]
    if kind == "models":
        return ("name", "epochs", "lr", "optimizer", "weight_decay", "augment"), [
            (e.name, *(_value(v, False) for v in e.recipe.as_dict().values()))
            for e in reg
            if e.recipe is not None
        ]
    raise fail(f"--defaults lists optimizers and models, not {kind}")


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


def _default_estimators(entry: Entry[Any]) -> str:
    """The estimator a rule runs when no --estimator is given: its paper's (``*``) in every
    norm, or per norm where a tuned entry differs; empty for search rules."""
    if paper_estimator(entry) is None:
        return ""
    cells = {_estimator_cell(entry, entry.tuned(n).estimator) for n in NORMS}
    if len(cells) == 1:
        return cells.pop()
    return ", ".join(f"{n}: {_estimator_cell(entry, entry.tuned(n).estimator)}" for n in NORMS)


def live_table(key: str, defaults: bool) -> dict[str, Any]:
    """The table of ``zoattack list KEY [--defaults]`` from the live registries (imports them
    all, torch included)."""
    reg = _registries()[key]
    if key == "attacks" and not defaults:
        header, rows = attack_rows()
        title: str = "zoattack attacks: what each needs of the model"
        caption: str | None = (
            "score-based attacks read logits or probs; hard-label attacks need only the "
            "top-1 label (a labels-only model, or any model with --labels-only); with no "
            "--attack, run uses sign at Linf and square at L2"
        )
    elif defaults:
        header, rows = default_rows(key, reg)
        title = f"zoattack {key}: defaults"
        caption = (
            "lr and mu in units of eps under a norm; * the rule's paper estimator (runs unless "
            "--estimator is given; a swapped one names the paper's); "
            "how they were measured: docs/TUNING.md"
            if key == "optimizers"
            else "the shipped weights' recipe; any `zoattack train` flag overrides"
        )
    else:
        header = ("name", "aliases", "description", "flags")
        rows = [(e.name, ", ".join(e.aliases), e.description, _flags(e.flags)) for e in reg]
        if key == "optimizers":
            # Which estimator each rule runs by default (its paper's, in every norm, unless a
            # norm's tuned entry swaps it, which that column of --defaults labels).
            header = ("name", "aliases", "estimator", "description", "flags")
            rows = [
                (r[0], r[1], _default_estimators(e), *r[2:]) for r, e in zip(rows, reg, strict=True)
            ]
        title, caption = f"zoattack {key}", None
        if key == "models":  # what the shipped weights measured, from their cards
            header = (*header, "accuracy (card)")
            rows = [
                (*r, card_accuracy(e.name, e.flags.get("pretrained"))) for r, e in zip(rows, reg)
            ]
    return {
        "title": title,
        "caption": caption,
        "header": list(header),
        "rows": [list(r) for r in rows],
    }


def _table_key(key: str, defaults: bool) -> str:
    return f"{key} --defaults" if defaults else key


def build_catalog() -> dict[str, Any]:
    """Every table `zoattack list` prints, from the live registries."""
    tables = {}
    for key in KINDS:
        tables[_table_key(key, False)] = live_table(key, False)
        if key in ("optimizers", "models"):
            tables[_table_key(key, True)] = live_table(key, True)
    return {"tables": tables}


def _table(key: str, defaults: bool) -> dict[str, Any]:
    if defaults and key not in ("optimizers", "models"):
        raise fail(f"--defaults lists optimizers and models, not {key}")
    try:
        return json.loads(CATALOG.read_text())["tables"][_table_key(key, defaults)]
    except (OSError, KeyError, ValueError):  # no catalog (a source tree mid-edit): compute
        return live_table(key, defaults)


def list_command(
    kind: Annotated[
        str | None,
        typer.Argument(
            help="What to list: attacks, estimators, optimizers, functions, models, datasets "
            "(none: the kinds).",
            show_default=False,
        ),
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
    defaults: Annotated[
        bool,
        typer.Option(
            "--defaults",
            help="Tuned defaults instead: optimizers per norm (lr, mu in eps) and for "
            "`zoattack optimize`; models, their training recipe.",
        ),
    ] = False,
) -> None:
    """List registered names with their descriptions (or, with --defaults, their defaults)."""
    if kind is None:
        header: tuple[str, ...] | list[str] = ("kind", "what")
        rows: list[Any] = list(KINDS.items())
        title: str | None = "zoattack list KIND"
        caption: str | None = "e.g. `zoattack list attacks`"
    else:
        key = kind.lower().rstrip("s") + "s"
        if key not in KINDS:
            raise fail(f"cannot list '{kind}'; choose one of: {', '.join(KINDS)}")
        table = _table(key, defaults)
        header, rows = table["header"], table["rows"]
        title, caption = table["title"], table["caption"]
    if markdown:
        out.print(
            "| " + " | ".join(header) + " |\n|" + "---|" * len(header),
            highlight=False,
            soft_wrap=True,  # a Markdown row must stay on one line whatever the terminal
        )
        for r in rows:
            out.print(
                "| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(r)) + " |",
                highlight=False,
                soft_wrap=True,
            )
        return
    rich_table = Table(title=title, caption=caption)
    for i, col in enumerate(header):
        # Names and settings stay whole; descriptions fold.
        rich_table.add_column(col, overflow="fold", no_wrap=defaults or i == 0)
    for r in rows:
        rich_table.add_row(*r)
    out.print(rich_table)


def write_catalog(path: Path = CATALOG) -> None:
    path.write_text(json.dumps(build_catalog(), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m zoattack.cli.list_cmd --write  (rewrites catalog.json)")
    write_catalog()
    print(f"wrote {CATALOG}")
