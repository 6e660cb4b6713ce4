"""`zoattack eval`: white-box PGD with restarts, the reference a black-box attack is judged by.

The rows and summary have the fields of `zoattack run` (so `report` and spreadsheets read both),
plus ``gradient_calls``: the model's forward+backward passes spent on each image. They are not
queries: ``queries`` is 0 on every row, because this attack never scores an input through a
black box; it reads the model's gradients, which a black-box attacker cannot.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from zoattack.cli._common import (
    P_MODEL,
    P_OPT,
    P_OUT,
    P_THREAT,
    DataDirOption,
    DatasetOption,
    DownloadOption,
    IndicesOption,
    ModelDirOption,
    RandomInitOption,
    Sha256Option,
    ThreatModelOption,
    WeightsOption,
    download_options,
    err,
    guarded,
    out,
)

EVAL_FIELDS = (
    "index",
    "label",
    "initial_prediction",
    "final_prediction",
    "success",
    "queries",
    "linf",
    "l2",
    "stop_reason",
    "queries_to_eps",  # run's schema: -1, a white-box attack makes no queries
    "gradient_calls",
)
WHITE_BOX_RULE = (
    "white-box: gradient_calls = forward+backward passes through the model per image (the "
    "check after each restart's last step is a forward pass and counts as one); they are not "
    "queries, and queries are 0; success is over initially-correct images"
)
_NOT_LOCAL = ("remote",)


@guarded
def eval_command(
    model: Annotated[
        str,
        typer.Option(
            help="A local model: zoo name (e.g. small_cnn_robust) or "
            "torchvision:/timm:/robustbench:NAME.",
            rich_help_panel=P_MODEL,
        ),
    ] = "small_cnn",
    dataset: DatasetOption = "fashion-mnist",
    data_dir: DataDirOption = None,
    weights: WeightsOption = None,
    model_dir: ModelDirOption = None,
    threat_model: ThreatModelOption = None,
    images: Annotated[
        int, typer.Option(help="Attack the first N test images.", rich_help_panel=P_MODEL)
    ] = 100,
    download: DownloadOption = False,
    sha256: Sha256Option = None,
    indices: IndicesOption = None,
    random_init: RandomInitOption = False,
    norm: Annotated[str, typer.Option(help="linf or l2.", rich_help_panel=P_THREAT)] = "linf",
    eps: Annotated[
        str | None,
        typer.Option(
            help="Radius, a number or a fraction like 8/255 (default: the data set's "
            "convention, `zoattack list datasets`).",
            rich_help_panel=P_THREAT,
            show_default=False,
        ),
    ] = None,
    loss: Annotated[str, typer.Option(help="margin or ce.", rich_help_panel=P_THREAT)] = "margin",
    steps: Annotated[int, typer.Option(help="PGD steps per restart.", rich_help_panel=P_OPT)] = 50,
    restarts: Annotated[
        int,
        typer.Option(
            help="Random restarts (each attacks only the images not fooled yet).",
            rich_help_panel=P_OPT,
        ),
    ] = 10,
    step_size: Annotated[
        float | None,
        typer.Option(help="Step size (default 2.5 eps / steps).", rich_help_panel=P_OPT),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images attacked together.", rich_help_panel=P_OPT)
    ] = 500,
    seed: Annotated[int, typer.Option(help="Seeds the random starts.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON.", rich_help_panel=P_OUT)
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write per_image.csv and summary.json here.", rich_help_panel=P_OUT
        ),
    ] = None,
) -> None:
    """White-box PGD with restarts on a local model: robust accuracy at eps (gradient calls,
    not queries)."""
    import torch

    from zoattack import __version__
    from zoattack.attacks.pgd import PGD, check_threat
    from zoattack.data import load_dataset
    from zoattack.data.fetch import load_or_fetch
    from zoattack.data.registry import load_test_images, parse_indices
    from zoattack.device import resolve_device
    from zoattack.jobs.attack import eps_source, resolve_eps
    from zoattack.models import check_random_init, create_model, default_pretrained
    from zoattack.seeding import make_generator, seed_everything

    if model.partition(":")[0] in _NOT_LOCAL:
        raise ValueError(
            f"zoattack eval reads gradients, so it needs a local model; {model} only answers "
            "queries (use `zoattack run` on it)"
        )
    for flag, value in (("--images", images), ("--batch-size", batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    norm = norm.lower()
    radius = resolve_eps(eps, dataset, norm)
    attack = PGD(norm, radius, steps=steps, restarts=restarts, step_size=step_size, loss=loss)
    dev = resolve_device(device)
    seed_everything(seed)  # third-party code only; the attack draws from `gen`
    picked = None
    if indices is not None:  # --indices replaces --images
        picked = parse_indices(indices)
        images = len(picked)
    if random_init:
        check_random_init(model, weights)
    data = load_test_images(
        dataset,
        data_dir=data_dir,
        images=images,
        indices=picked,
        load=functools.partial(load_or_fetch, load_dataset, download=download),
    )
    check_threat(attack.norm, radius, data.images[0].numel())
    with torch.random.fork_rng(devices=[]):  # --random-init: seeded, caller's RNG untouched
        torch.manual_seed(seed)
        net = create_model(
            model,
            dataset=data,
            weights=weights,
            model_dir=model_dir,
            pretrained=default_pretrained(model, weights, random_init=random_init),
            device=dev,
            threat_model=threat_model,
            generator=make_generator(seed) if random_init and ":" not in model else None,
            **download_options(download, sha256),
        ).eval()
    gen = make_generator(seed, dev)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for start in range(0, len(data.labels), batch_size):
        x = data.images[start : start + batch_size].to(dev)
        y = data.labels[start : start + batch_size].to(dev)
        with torch.no_grad():
            clean = net(x).argmax(1)
        ok = clean == y
        final = clean.clone()
        success = torch.zeros_like(ok)
        calls = torch.zeros(len(y), dtype=torch.long, device=dev)
        linf = torch.zeros(len(y), dtype=torch.float64, device=dev)
        l2 = torch.zeros(len(y), dtype=torch.float64, device=dev)
        if ok.any():
            res = attack.perturb(net, x[ok], y[ok], generator=gen)
            final[ok] = res.final_pred
            success[ok] = res.success
            calls[ok] = res.gradient_calls
            linf[ok], l2[ok] = res.linf, res.l2
        err.print(
            f"images {start}-{start + len(y) - 1}: {int(success.sum())} of {int(ok.sum())} "
            f"fooled ({time.perf_counter() - t0:.0f} s)",
            highlight=False,
        )
        for i in range(len(y)):
            reason = "misclassified" if not ok[i] else "success" if success[i] else "steps"
            rows.append(
                {
                    "index": start + i if picked is None else picked[start + i],
                    "label": int(y[i]),
                    "initial_prediction": int(clean[i]),
                    "final_prediction": int(final[i]),
                    "success": int(success[i]),
                    "queries": 0,
                    "linf": round(float(linf[i]), 6),
                    "l2": round(float(l2[i]), 6),
                    "stop_reason": reason,
                    "queries_to_eps": -1,
                    "gradient_calls": int(calls[i]),
                }
            )
    wall = time.perf_counter() - t0
    summary = summarize_white_box(rows, wall_seconds=wall)
    settings = {
        "command": "eval",
        "attack": "pgd",
        "description": attack.describe()
        + (f"; {model} randomly initialised, untrained (--random-init)" if random_init else ""),
        "model": model,
        "dataset": dataset,
        "data_dir": data_dir,
        "weights": weights,
        "model_dir": model_dir,
        "threat_model": threat_model,
        "images": len(rows),
        **({"indices": indices} if indices is not None else {}),
        "norm": attack.norm,
        "eps": radius,
        "eps_source": eps_source(radius, dataset, attack.norm),
        "loss": loss,
        "steps": steps,
        "restarts": restarts,
        "step_size": attack.step_size,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(dev),
        "zoattack": __version__,
        "torch": torch.__version__,
        "data_source": str(getattr(data, "source", "")),
        "counting_rule": WHITE_BOX_RULE,
    }
    if out_dir is not None:
        write_eval_folder(out_dir, rows, summary, settings)
    if as_json:
        typer.echo(json.dumps({"settings": settings, "summary": summary}))
        return
    table = Table(
        title=f"white-box {attack.describe()} vs {model} on {dataset} ({len(rows)} images)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "initially_correct",
        "successes",
        "success_rate",
        "robust_accuracy",
        "median_gradient_calls_success",
        "gradient_calls",
        "median_linf_success",
        "median_l2_success",
        "wall_seconds",
    ):
        val = summary[key]
        if val is not None and key in ("success_rate", "robust_accuracy"):
            text = f"{100 * val:.1f}%"  # rates as percents, as in run, batch and report
        else:
            text = "-" if val is None else f"{val:,.4g}" if isinstance(val, float) else f"{val:,}"
        table.add_row(key.replace("_", " "), text)
    out.print(table)
    out.print(f"[dim]counting rule: {WHITE_BOX_RULE}[/]")
    if out_dir is not None:
        out.print(f"wrote {out_dir}/per_image.csv, summary.json")


def summarize_white_box(rows: list[dict[str, Any]], *, wall_seconds: float) -> dict[str, Any]:
    """`zoattack run`'s summary fields (queries: none made) plus the white-box ledger.

    ``robust_accuracy`` is over all images (a misclassified image is not robust);
    ``success_rate`` over the initially-correct ones, as in `run`.
    """
    import torch

    from zoattack.jobs.attack import summarize_rows

    s = summarize_rows(rows, wall_seconds=wall_seconds, scored_inputs=0)
    attacked = [r for r in rows if r["stop_reason"] != "misclassified"]
    succ = [r for r in attacked if int(r["success"])]
    calls = sorted(int(r["gradient_calls"]) for r in succ)
    for key in ("mean_queries_success", "median_queries_success", "mean_queries_all"):
        s[key] = None  # no queries were made; never report gradient calls as queries
    s.update(
        {
            "robust_accuracy": round((len(attacked) - len(succ)) / len(rows), 4) if rows else None,
            "queries": 0,
            "gradient_calls": sum(int(r["gradient_calls"]) for r in rows),
            "median_gradient_calls_success": float(torch.tensor(calls).double().median())
            if calls
            else None,
            "mean_gradient_calls_all": round(
                sum(int(r["gradient_calls"]) for r in attacked) / len(attacked), 3
            )
            if attacked
            else None,
            "ledger": "white-box",
            "counting_rule": WHITE_BOX_RULE,
        }
    )
    return s


def write_eval_folder(
    path: Path, rows: list[dict[str, Any]], summary: dict[str, Any], settings: dict[str, Any]
) -> None:
    """``per_image.csv`` (run's fields + gradient_calls) and ``summary.json``, as `run` writes."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "per_image.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EVAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path / "per_image.csv")
    (path / "summary.json").write_text(
        json.dumps({"settings": settings, "summary": summary}, indent=2, default=str)
    )
