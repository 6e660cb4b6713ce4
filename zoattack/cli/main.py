"""The root `zoattack` command. Each command group lives in its own module."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperOption

from zoattack._version import __version__
from zoattack.cli import batch, defend, eval, list_cmd, optimize, report, run, serve, train, verify
from zoattack.cli._common import EXIT_OK, out, request_verbose

_display_type_rich = TyperOption.display_type_rich


def _flag_display_type(self: TyperOption, ctx: Any) -> str | None:
    # This Typer shows a value type beside flags too ("--json <bool>"), though "--json true"
    # is refused: a flag takes no value, so its help shows none.
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_display_type  # type: ignore[method-assign]

app = typer.Typer(
    name="zoattack",
    help="Zeroth-order (query-only) adversarial attacks and black-box defense.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"zoattack {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def root(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Zeroth-order (query-only) adversarial attacks and black-box defense."""
    request_verbose(ctx, verbose)


app.command("run")(run.run_command)
app.command("list")(list_cmd.list_command)
app.command("optimize")(optimize.optimize_command)
app.command("train")(train.train_command)
app.command("eval")(eval.eval_command)
app.add_typer(defend.app, name="defend")
app.command("serve")(serve.serve_command)
app.command("batch")(batch.batch_command)
app.command("report")(report.report_command)
app.command("verify")(verify.verify_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
