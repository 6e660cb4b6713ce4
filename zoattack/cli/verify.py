"""`zoattack verify RUN`: re-score a run's adversarial examples (same model or transfer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zoattack.cli._common import (
    P_MODEL,
    P_OUT,
    DataDirOption,
    DownloadOption,
    ModelDirOption,
    Sha256Option,
    WeightsOption,
    download_options,
    guarded,
    out,
)

__all__ = ["verify_command"]

# Exit code when the attacked model does not confirm every recorded success.
EXIT_NOT_CONFIRMED = 1


@guarded
def verify_command(
    run: Annotated[
        Path,
        typer.Argument(
            help="A run folder (zoattack run --out) or an adversarial-examples file "
            "(AttackResult.save).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Score them on this model instead (transfer); default: the attacked model.",
            rich_help_panel=P_MODEL,
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Data set of the images (default: the run's).",
            rich_help_panel=P_MODEL,
            show_default=False,
        ),
    ] = None,
    data_dir: DataDirOption = None,
    weights: WeightsOption = None,
    model_dir: ModelDirOption = None,
    download: DownloadOption = False,
    sha256: Sha256Option = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Largest batch sent to the model.")] = 4096,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON.", rich_help_panel=P_OUT)
    ] = False,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="Also write the report into the run folder (verify.json, or "
            "verify-MODEL.json for another model); by default nothing is written.",
            rich_help_panel=P_OUT,
        ),
    ] = False,
) -> None:
    """Re-score adversarial examples on the attacked model or another one (transfer).

    Each example is scored once; these checks are counted apart from the attack's queries.
    Exit code 1 when the attacked model does not confirm every recorded success."""
    import json

    from rich.table import Table

    from zoattack.jobs.verify import verify
    from zoattack.results.log import write_json

    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    report = verify(
        run,
        model=model,
        weights=weights,
        model_dir=model_dir,
        dataset=dataset,
        data_dir=data_dir,
        device=device,
        max_batch=max_batch,
        model_options=download_options(download, sha256),
    )
    if save:
        if not run.is_dir():
            raise ValueError("--save writes into a run folder; RUN is a file")
        name = "verify.json" if report["same_model"] else f"verify-{_slug(report['model'])}.json"
        write_json(run / name, report)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        kind = "same model" if report["same_model"] else "transfer"
        table = Table(title=f"verify {run} on {report['model']} ({kind})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in report.items():
            if k in ("path", "counting_rule", "model", "same_model"):
                continue
            table.add_row(k.replace("_", " "), _cell(k, v))
        out.print(table)
        out.print(f"[dim]{report['counting_rule']}[/]")
    if report["same_model"] and report.get("confirmed") != report["recorded_successes"]:
        raise typer.Exit(EXIT_NOT_CONFIRMED)


def _cell(key: str, value: object) -> str:
    """Rates as percents, as `zoattack run` shows them (--json and verify.json keep fractions)."""
    if value is None:
        return ""
    if key.endswith("_rate") and isinstance(value, (int, float)):
        return f"{100 * value:.1f}%"
    return str(value)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
