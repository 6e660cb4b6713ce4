"""`zoattack run`: a query-limited black-box attack on a real model, with an honest ledger."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoattack import __version__
from zoattack.attacks import run_attack
from zoattack.attacks.report import summarize, write_outputs
from zoattack.blackbox import BlackBox
from zoattack.cli._common import err, guarded, out, resolve_device
from zoattack.norms import check_norm
from zoattack.optim import OPTIMIZERS, create_optimizer
from zoattack.optim.base import ZORule
from zoattack.seeding import make_generator, seed_everything

P_MODEL, P_THREAT, P_OPT, P_OUT = "Model and data", "Threat model", "Optimizer", "Output"
DEFAULT_EPS = {"linf": 0.1, "l2": 1.5}


# Per (rule, norm): the choices benchmarks/attack.py tuned on the bundled small_cnn
# (Fashion-MNIST, Linf eps 0.1 / L2 eps 1.5, 1,000 queries, 20 held-out images); lr is a
# fraction of eps so it scales with the radius. Explicit options override each field.
TUNED: dict[tuple[str, str], dict[str, object]] = {
    ("zo_sgd", "linf"): {"lr": 0.25, "subspace": "tile:7", "estimator": "sphere"},
    ("zo_signsgd", "linf"): {"lr": 0.25, "subspace": "tile:7", "momentum": 0.9},
    ("zo_adamm", "linf"): {"lr": 0.125, "subspace": "tile:7"},
    ("radazo", "linf"): {"lr": 0.125, "subspace": "tile:7", "estimator": "gaussian"},
    ("lizo", "linf"): {"lr": 0.5, "subspace": "tile:14"},
    ("zo_sgd", "l2"): {"lr": 0.5, "subspace": "tile:7"},
    ("zo_signsgd", "l2"): {"lr": 0.025, "subspace": "dct:14"},
    ("zo_adamm", "l2"): {"lr": 0.025, "subspace": "dct:14", "estimator": "gaussian"},
    ("radazo", "l2"): {"lr": 0.025, "subspace": "dct:14"},
    ("lizo", "l2"): {"lr": 0.25, "subspace": "dct:14"},
}
# The best attack per norm in the same benchmark (sign: Linf only).
DEFAULT_OPTIMIZER = {"linf": "sign", "l2": "square"}


def default_lr(rule: str, norm: str, eps: float) -> float:
    """Search rules (registry flag ``search``: sign, square) take ``lr`` as their radius, eps;
    gradient rules the benchmark-tuned fraction of eps (eps/2 for untuned pairs)."""
    if OPTIMIZERS.get(rule).flags.get("search"):
        return eps
    return float(TUNED.get((rule, norm), {}).get("lr", 0.5)) * eps  # type: ignore[arg-type]


def _check_search_options(rule: str, norms: tuple[str, ...], norm: str, eps: float,
                          subspace: str, *, lr: float | None, estimator: str | None,
                          samples: int | None, mu: float | None) -> None:
    """Search rules (sign, square) estimate no gradient, search the full image, and take
    ``lr`` as their radius (default eps; a larger one would only be projected back)."""
    for option, value in (("--estimator", estimator), ("--samples", samples), ("--mu", mu)):
        if value is not None:
            raise ValueError(f"the {rule} rule uses no gradient estimator; drop {option}")
    if norms and norm not in norms:
        raise ValueError(f"the {rule} rule supports --norm {' or '.join(norms)}, got {norm}")
    if subspace != "full":
        raise ValueError(f"the {rule} rule searches the full image; --subspace must be full, "
                         f"got {subspace!r}")
    if lr is not None and lr > eps:
        raise ValueError(f"--lr is the {rule} rule's search radius and must be <= eps "
                         f"({eps:g}), got {lr:g}")


@guarded
def run_command(
    model: Annotated[str, typer.Option(help="Zoo name (resnet20, small_cnn) or "
                                       "torchvision:/timm:/robustbench:NAME.",
                                       rich_help_panel=P_MODEL)] = "small_cnn",
    dataset: Annotated[str, typer.Option(help="Data set (see `zoattack list datasets`).",
                                         rich_help_panel=P_MODEL)] = "fashion-mnist",
    data_dir: Annotated[str | None, typer.Option(help="Root of the data set files.",
                                                 rich_help_panel=P_MODEL)] = None,
    weights: Annotated[str | None, typer.Option(help="Checkpoint file for the model.",
                                                rich_help_panel=P_MODEL)] = None,
    model_dir: Annotated[str | None, typer.Option(help="Folder with pretrained files.",
                                                  rich_help_panel=P_MODEL)] = None,
    threat_model: Annotated[str | None, typer.Option(help="robustbench threat model.",
                                                     rich_help_panel=P_MODEL)] = None,
    images: Annotated[int, typer.Option(help="Attack the first N test images.",
                                        rich_help_panel=P_MODEL)] = 100,
    norm: Annotated[str, typer.Option(help="linf or l2.", rich_help_panel=P_THREAT)] = "linf",
    eps: Annotated[float | None, typer.Option(help="Radius (default 0.1 linf, 1.5 l2).",
                                              rich_help_panel=P_THREAT)] = None,
    target: Annotated[str | None, typer.Option(help="random, least-likely or a class index "
                                               "(default: untargeted).",
                                               rich_help_panel=P_THREAT)] = None,
    loss: Annotated[str, typer.Option(help="margin or ce.", rich_help_panel=P_THREAT)] = "margin",
    budget: Annotated[int, typer.Option(help="Queries per image (all scored inputs count).",
                                        rich_help_panel=P_THREAT)] = 1000,
    optimizer: Annotated[str | None, typer.Option(
        help="Update rule (see `zoattack list optimizers`); default sign (Linf) or square (L2).",
        rich_help_panel=P_OPT)] = None,
    estimator: Annotated[str | None, typer.Option(help="Gradient estimator (default: the "
                                                  "rule's pairing).", rich_help_panel=P_OPT)] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Directions K per step.",
                                                rich_help_panel=P_OPT)] = None,
    lr: Annotated[float | None, typer.Option(help="Step size (default by rule and norm).",
                                             rich_help_panel=P_OPT)] = None,
    mu: Annotated[float | None, typer.Option(help="Finite-difference radius.",
                                             rich_help_panel=P_OPT)] = None,
    difference: Annotated[str | None, typer.Option(help="forward (K+1 queries) or central "
                                                   "(2K, antithetic) differences.",
                                                   rich_help_panel=P_OPT)] = None,
    momentum: Annotated[float | None, typer.Option(help="zo_signsgd: running average of the "
                                                   "estimates before the sign (e.g. 0.9).",
                                                   rich_help_panel=P_OPT)] = None,
    subspace: Annotated[str | None, typer.Option(help="full, tile:K (a CxKxK variable upsampled) or "
                                          "dct:K (lowest KxK DCT frequencies); A>B>C refines coarse-to-fine, e.g. tile:7>tile:14>full.",
                                          rich_help_panel=P_OPT)] = None,
    universal: Annotated[bool, typer.Option("--universal", help="One perturbation for all "
                                            "images (each evaluation costs 1 query per image).",
                                            rich_help_panel=P_THREAT)] = False,
    seed: Annotated[int, typer.Option(help="Seed; same seed on CPU gives identical results.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Largest batch sent to the model.")] = 4096,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.",
                                          rich_help_panel=P_OUT)] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write per_image.csv and "
                                                 "summary.json here.", rich_help_panel=P_OUT)] = None,
    save_images: Annotated[bool, typer.Option("--save-images", help="With --out: a PNG grid "
                                              "(original/adversarial/perturbation) and a "
                                              "success-vs-queries curve.",
                                              rich_help_panel=P_OUT)] = False,
) -> None:
    """Attack a model you may only query; report success rate and per-image queries."""
    from zoattack.data import load_dataset
    from zoattack.models import create_model

    norm = norm.lower()
    eps = DEFAULT_EPS.get(norm, 0.0) if eps is None else eps
    norm = check_norm(norm, eps)
    if images < 1:
        raise ValueError(f"--images must be >= 1, got {images}")
    if budget < 2:
        raise ValueError(f"--budget must be >= 2 queries per image, got {budget}")
    if save_images and out_dir is None:
        raise ValueError("--save-images needs --out DIR to write the PNG files into")
    entry = OPTIMIZERS.get(optimizer or DEFAULT_OPTIMIZER[norm])
    rule_name = entry.name
    search = bool(entry.flags.get("search"))
    tuned = {} if search else TUNED.get((rule_name, norm), {})
    subspace = subspace or str(tuned.get("subspace", "full"))
    estimator = estimator or tuned.get("estimator")  # type: ignore[assignment]
    if momentum is None and estimator == tuned.get("estimator"):
        momentum = tuned.get("momentum")  # type: ignore[assignment]
    if search:
        _check_search_options(rule_name, entry.flags.get("norms", ()), norm, eps, subspace,
                              lr=lr, estimator=estimator, samples=samples, mu=mu)
    dev = resolve_device(device)
    seed_everything(seed)  # third-party code only; zoattack draws from `gen`
    gen = make_generator(seed, dev)
    data = load_dataset(dataset, split="test", data_dir=data_dir, limit=images)
    net = create_model(model, dataset=data, weights=weights, model_dir=model_dir,
                       pretrained=weights is None and ":" not in model, device=dev,
                       threat_model=threat_model)
    rule_lr = lr if lr is not None else default_lr(rule_name, norm, eps)
    if search:  # estimator-free: the radius, the norm and the budget drive their schedules
        rule = create_optimizer(rule_name, lr=rule_lr, norm=norm, budget=budget)
    else:
        rule = create_optimizer(rule_name, lr=rule_lr, estimator=estimator, num_samples=samples,
                                mu=mu, difference=difference, momentum=momentum)
    label = rule_name if rule.estimator is None else f"{rule_name}+{rule.estimator.name}"
    blackbox = BlackBox(net, output="logits", budget=budget, max_batch=max_batch,
                        input_shape=data.image_shape)
    x, y = data.images.to(dev), data.labels.to(dev)
    settings = {
        "model": model, "dataset": dataset, "images": len(y), "norm": norm, "eps": eps,
        "target": target, "loss": loss, "budget": budget, "optimizer": rule_name,
        "estimator": rule.estimator.name if rule.estimator is not None else None,
        "samples": rule.estimator.num_samples if rule.estimator is not None else None,
        "mu": rule.estimator.mu if rule.estimator is not None else None,
        "lr": float(rule.lr) if not isinstance(rule.lr, torch.Tensor) else None,
        "subspace": subspace, "universal": universal, "seed": seed, "device": str(dev),
        "zoattack": __version__, "torch": torch.__version__, "data_source": data.source,
    }
    if universal:
        _run_universal(blackbox, x, y, rule, gen, norm, eps, budget, loss, target, subspace,
                       settings, as_json, out_dir, len(data.classes))
        return
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[done]}/{task.fields[n]} done"),
                  TextColumn("{task.completed:,.0f} queries"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(label, total=budget * len(y),
                                 done=0, n=len(y))

        def show(step: int, _: object, queries: torch.Tensor) -> None:
            progress.update(task, completed=int(queries.sum()))

        result = run_attack(blackbox, x, y, rule, generator=gen, norm=norm, eps=eps,
                            budget=budget, loss=loss, target=target, subspace=subspace,
                            callback=show)
    wall = time.perf_counter() - t0
    summary = summarize(result, wall_seconds=wall, total_queries=blackbox.total_queries)
    if out_dir is not None:
        write_outputs(out_dir, result, summary, settings)
        if save_images:
            from zoattack.attacks.plots import save_image_grid, save_success_curve

            save_image_grid(out_dir / "examples.png", x, result, classes=data.classes)
            save_success_curve(out_dir / "success_vs_queries.png", result, budget,
                               label=f"{rule_name}")
    title = f"{label} vs {model} on {dataset}: {norm} eps={eps:g}, budget {budget:,}"
    if _report(title, settings, summary, as_json, keys=(
            "initially_correct", "successes", "success_rate", "mean_queries_success",
            "median_queries_success", "mean_queries_all", "median_linf_success",
            "median_l2_success", "wall_seconds", "scored_inputs_per_second")):
        return
    if out_dir is not None:
        extra = ", examples.png, success_vs_queries.png" if save_images else ""
        out.print(f"wrote {out_dir}/per_image.csv, summary.json{extra}")


def _run_universal(blackbox: BlackBox, x: torch.Tensor, y: torch.Tensor, rule: ZORule,
                   gen: torch.Generator, norm: str, eps: float, budget: int, loss: str,
                   target: str | None, subspace: str, settings: dict[str, object],
                   as_json: bool, out_dir: Path | None, classes: int) -> None:
    from zoattack.attacks.universal import run_universal

    # One target class for the whole set: a universal perturbation has one goal.
    tgt = None
    if target is not None:
        if target == "random":
            cls = int(torch.randint(0, classes, (1,), generator=gen, device=gen.device))
        elif target.isdigit() and int(target) < classes:
            cls = int(target)
        else:
            raise ValueError("--universal takes --target random or a class index "
                             f"in [0, {classes - 1}], got {target!r}")
        tgt = torch.full_like(y, cls)
    t0 = time.perf_counter()
    res = run_universal(blackbox, x, y, rule, generator=gen, norm=norm, eps=eps, budget=budget,
                        loss=loss, target=tgt, subspace=subspace)
    wall = time.perf_counter() - t0
    summary = {
        "images": len(y), "initially_correct": int(res.clean_correct.sum()),
        "fooled": int(res.fooled.sum()), "fooling_rate": round(res.fooling_rate or 0.0, 4),
        "evaluations": res.evaluations, "queries_per_image": int(res.queries.max()),
        "linf": round(res.linf, 6), "l2": round(res.l2, 6), "wall_seconds": round(wall, 3),
        "scored_inputs": blackbox.total_queries,
        "counting_rule": "one query = one input scored; one evaluation of the universal "
                         "perturbation scores every attacked image once",
    }
    if out_dir is not None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"delta": res.delta.detach().cpu().contiguous()}, str(out_dir / "delta.safetensors"))
        (out_dir / "summary.json").write_text(json.dumps({"settings": settings,
                                                           "summary": summary}, indent=2))
    title = (f"universal {settings['optimizer']} on {settings['model']}: {norm} eps={eps:g}, "
             f"budget {budget:,} per image")
    _report(title, settings, summary, as_json,
            keys=tuple(k for k in summary if k != "counting_rule"))


def _report(title: str, settings: dict[str, object], summary: dict[str, object], as_json: bool,
            keys: tuple[str, ...]) -> bool:
    """Print the summary as JSON (returns True) or as a Rich table plus the counting rule."""
    if as_json:
        typer.echo(json.dumps({"settings": settings, "summary": summary}))
        return True
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        val = summary[key]
        text = "-" if val is None else (f"{val:,.4g}" if isinstance(val, float) else f"{val:,}"
                                        if isinstance(val, int) else str(val))
        table.add_row(key.replace("_", " "), text)
    out.print(table)
    out.print(f"[dim]counting rule: {summary['counting_rule']}[/]")
    return False
