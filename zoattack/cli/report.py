"""`zoattack report [RESULTS]`: tables, Markdown/CSV exports and figures of batch results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from zoattack.cli._common import P_EXPORT, guarded, out


@guarded
def report_command(
    results: Annotated[
        Path,
        typer.Argument(
            metavar="RESULTS",
            help="A `zoattack batch` results folder, or its results.sqlite (or one "
            "`zoattack run --out` folder: its summary); a folder of such folders gets one "
            "line each.",
        ),
    ] = Path("runs"),
    markdown: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            metavar="FILE",
            help="Write the tables as Markdown.",
            rich_help_panel=P_EXPORT,
        ),
    ] = None,
    csv_file: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            metavar="FILE",
            help="Write one CSV line per job (settings and metrics).",
            rich_help_panel=P_EXPORT,
        ),
    ] = None,
    rows_csv: Annotated[
        Path | None,
        typer.Option(
            "--rows-csv",
            metavar="FILE",
            help="Write every per-image row, with its job's settings.",
            rich_help_panel=P_EXPORT,
        ),
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            metavar="DIR",
            help="Folder for the figures (default: RESULTS/plots).",
            rich_help_panel=P_EXPORT,
        ),
    ] = None,
    plot_format: Annotated[
        str,
        typer.Option(
            "--plot-format",
            help="Figures as png, pdf or svg (pdf, svg: vector, for papers).",
            rich_help_panel=P_EXPORT,
        ),
    ] = "png",
    no_plots: Annotated[
        bool, typer.Option("--no-plots", help="Write no figures.", rich_help_panel=P_EXPORT)
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the per-job summaries as JSON instead of tables.")
    ] = False,
) -> None:
    """Summarize batch results: success rate, queries and distortion per job and group."""
    from zoattack.batch.report import (
        Results,
        group_table,
        job_table,
        save_query_histograms,
        save_success_curves,
        to_markdown,
        write_csv,
        write_rows_csv,
    )
    from zoattack.results.figures import check_plot_format

    ext = check_plot_format(plot_format)
    if results.is_dir() and not (results / "results.sqlite").exists():
        if (results / "summary.json").is_file():
            _run_folder(results, as_json)
            return
        if _index(results, as_json):
            return
        _unfinished_run(results)
    res = Results(results)
    summaries = res.summaries()
    groups = res.groups()
    written: list[Path] = []
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(res))
        written.append(markdown)
    if csv_file is not None:
        written.append(write_csv(csv_file, summaries))
    if rows_csv is not None:
        written.append(write_rows_csv(rows_csv, res))
    if not no_plots:
        folder = plots or res.path.parent / "plots"
        written.append(save_success_curves(folder / f"success_vs_queries.{ext}", res))
        written.append(save_query_histograms(folder / f"query_histograms.{ext}", res))
    if as_json:
        typer.echo(json.dumps({"jobs": summaries, "groups": groups}, default=str))
        return
    out.print(job_table(summaries, title=f"{res.path}: {len(summaries)} jobs"))
    if any(g["jobs"] > 1 for g in groups):
        out.print(group_table(groups))
    out.print(
        "[dim]success: over initially-correct images; q and dist: over successes; "
        "dist@budget (hard-label jobs): median final distance over attacked images; "
        "one query = one input scored[/]"
    )
    for path in written:
        out.print(f"wrote {path}")


def _run_folder(folder: Path, as_json: bool) -> None:
    """The summary of one `zoattack run --out` folder (hard-label runs with distances)."""
    from zoattack.results.tables import DECISION_RUN_KEYS, RUN_KEYS, summary_table

    path = folder / "summary.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a zoattack run summary ({exc})") from None
    problem = _summary_problem(doc, (*RUN_KEYS, *DECISION_RUN_KEYS))
    if problem:
        raise ValueError(
            f"{path} is not a zoattack run summary ({problem}); rerun the run with "
            "--overwrite to write it again"
        )
    settings, summary = dict(doc["settings"]), dict(doc["summary"])
    if as_json:
        typer.echo(json.dumps({"settings": settings, "summary": summary}, default=str))
        return
    hard = bool(settings.get("attack"))
    name = settings.get("attack") or settings.get("optimizer")
    title = f"{folder}: {name}{' (hard-label)' if hard else ''} vs {settings.get('model')}"
    out.print(summary_table(title, summary, DECISION_RUN_KEYS if hard else RUN_KEYS))
    if settings.get("method"):
        out.print(f"method: {settings['method']}", soft_wrap=True, markup=False)
    out.print(f"counting rule: {summary.get('counting_rule')}", markup=False)


def _summary_problem(doc: Any, shown: tuple[str, ...]) -> str:
    """What is wrong with a summary.json's types ('' if nothing): the table shows numbers and
    names only, so a hand-edited or damaged file is one line, not a table of odd values."""
    if not isinstance(doc, dict):
        return f"it holds a JSON {type(doc).__name__}, not an object"
    for part in ("settings", "summary"):
        if not isinstance(doc.get(part), dict):
            return f'"{part}" is {_kind(doc.get(part))}, not an object'
    summary, settings = doc["summary"], doc["settings"]
    images = summary.get("images")
    if not isinstance(images, int) or isinstance(images, bool) or images < 0:
        return f'summary "images" is {_kind(images)}, not a count'
    for key in shown:
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            return f'summary "{key}" is {_kind(v)}, not a number'
    for key in ("counting_rule",):
        if summary.get(key) is not None and not isinstance(summary[key], str):
            return f'summary "{key}" is {_kind(summary[key])}, not text'
    for key in ("attack", "optimizer", "model", "method"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            return f'settings "{key}" is {_kind(settings[key])}, not text'
    return ""


def _kind(v: Any) -> str:
    return "missing" if v is None else json.dumps(v)[:30]


def _unfinished_run(folder: Path) -> None:
    """A `zoattack run --out` folder without its summary: a run killed or stopped part-way."""
    from zoattack.results.folder import RunFolder

    run = RunFolder(folder)
    if not run.meta_path.is_file():
        return  # not a run folder: the batch store lookup says what is missing
    try:
        meta = json.loads(run.meta_path.read_text())
        settings = meta.get("settings") if isinstance(meta, dict) else None
        images = settings.get("images") if isinstance(settings, dict) else None
        stored = len(run.read_rows())
    except (OSError, ValueError, TypeError, AttributeError):
        images, stored = None, None
    done = (
        f" ({stored} of {images} images stored)"
        if isinstance(stored, int) and isinstance(images, int) and not isinstance(images, bool)
        else ""
    )
    raise ValueError(
        f"{folder} holds an unfinished `zoattack run`{done}: it has no summary.json yet; "
        f"rerun the command that started it with --resume (same settings, --out {folder}) to "
        "finish it, then report it"
    )


def _index(folder: Path, as_json: bool) -> bool:
    """One line per result folder inside ``folder`` (bare `zoattack report`: ./runs); False
    when it holds none (the caller's one-line error then names what was expected)."""
    from rich.table import Table

    from zoattack.batch.report import Results

    lines: list[dict[str, object]] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (child / "results.sqlite").is_file():
            try:
                jobs = Results(child).summaries()
            except ValueError:  # an empty store: no jobs to show yet
                jobs = []
            rates = [j["success_rate"] for j in jobs if j.get("success_rate") is not None]
            lines.append(
                {
                    "folder": str(child),
                    "kind": "batch",
                    "what": f"{len(jobs)} jobs, "
                    f"{sum(j['status'] == 'finished' for j in jobs)} finished",
                    "success_rate": (min(rates), max(rates)) if rates else None,
                }
            )
        elif (child / "summary.json").is_file():
            try:
                doc = json.loads((child / "summary.json").read_text())
                settings, summary = dict(doc["settings"]), dict(doc["summary"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a run summary: not ours to list
            name = settings.get("attack") or settings.get("optimizer")
            lines.append(
                {
                    "folder": str(child),
                    "kind": "run",
                    "what": f"{name} vs {settings.get('model')}, {settings.get('norm')} "
                    f"eps={settings.get('eps')}, {summary.get('initially_correct')} images",
                    "success_rate": summary.get("success_rate"),
                }
            )
    if not lines:
        return False
    if as_json:
        typer.echo(json.dumps({"results": lines}, default=str))
        return True
    table = Table(
        title=f"{folder}: {len(lines)} results", caption="zoattack report FOLDER: details"
    )
    for col in ("folder", "kind", "what", "success"):
        table.add_column(col, justify="right" if col == "success" else "left")
    for line in lines:
        rate = line["success_rate"]
        if isinstance(rate, tuple):
            text = f"{100 * rate[0]:.1f}%" + (
                f"-{100 * rate[1]:.1f}%" if rate[1] != rate[0] else ""
            )
        else:
            text = "-" if rate is None else f"{100 * float(rate):.1f}%"  # type: ignore[arg-type]
        table.add_row(str(line["folder"]), str(line["kind"]), str(line["what"]), text)
    out.print(table)
    return True
