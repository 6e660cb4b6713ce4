"""Shared CLI plumbing: consoles, the error contract, generator/device set-up.

Import cost: ``zoattack --help`` and every ``zoattack COMMAND --help`` import all of
``zoattack/cli/`` (Typer reads each command's options from its signature), so a module here
imports at its top only the standard library, typer, rich and torch-free zoattack modules
(``_common``, ``_version``, ``errors``, ``registry``, ``norms``). Everything else (torch, the
jobs, models, data) is imported inside the command function that needs it.
``tests/cli/test_startup.py`` holds every command's ``--help`` to that.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from zoattack.errors import ZOAttackError

if TYPE_CHECKING:
    import torch


class _DiagnosticsConsole(Console):
    """The stderr console, minus one stray empty line.

    Rich's ``Progress.stop`` ends every progress display on a console that is not interactive
    (a pipe, a log file, a test runner) with a bare ``console.print()``. Our progress bars are
    transient, so that empty line was all they left behind, and when a command failed inside
    one it came out just before the one-line error. Commands never print a bare empty line on
    purpose (they print text, or call ``line()``), so a bare call is dropped there.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if not objects and not kwargs and not self.is_interactive:
            return
        super().print(*objects, **kwargs)


out = Console()  # results
err = _DiagnosticsConsole(stderr=True)  # progress, diagnostics

# Exit codes, the same in every command: 0 done, 2 bad input (nothing was run or written),
# 3 stopped part-way (a failing model, a dead server, Ctrl-C): what finished is kept and
# the same command with --resume (or a rerun of a batch) continues.
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 3

# Help panels shared by the commands.
P_MODEL = "Model and data"
P_THREAT = "Threat model"
P_OPT = "Optimizer"
P_OUT = "Output"
P_RUN = "Run"
P_RAY = "Ray executor (--executor ray)"
P_HTTP = "HTTP"
P_EXPORT = "Exports"
P_PROBLEM = "Problem"

# Options every command that builds a victim shares (run, serve).
DataDirOption = Annotated[
    str | None,
    typer.Option(
        help="Root of the data set files (default $ZOATTACK_DATA_DIR or ./data).",
        rich_help_panel=P_MODEL,
        show_default=False,
    ),
]
WeightsOption = Annotated[
    str | None, typer.Option(help="Checkpoint file for the model.", rich_help_panel=P_MODEL)
]
ModelDirOption = Annotated[
    str | None, typer.Option(help="Folder with pretrained files.", rich_help_panel=P_MODEL)
]
DatasetOption = Annotated[
    str, typer.Option(help="Data set (see `zoattack list datasets`).", rich_help_panel=P_MODEL)
]
ThreatModelOption = Annotated[
    str | None, typer.Option(help="robustbench threat model.", rich_help_panel=P_MODEL)
]
# Published weights (zoattack/models/download.py): fetched only when asked, always verified.
DownloadOption = Annotated[
    bool,
    typer.Option(
        "--download",
        help="Fetch what is missing: published zoo weights (pinned URL and SHA-256, e.g. "
        "resnet20 on cifar10) into the torch hub cache, torchvision/timm pretrained weights "
        "with their own checks, and CIFAR-10/MNIST/Fashion-MNIST (torchvision, MD5-checked) "
        "into --data-dir.",
        rich_help_panel=P_MODEL,
    ),
]
RandomInitOption = Annotated[
    bool,
    typer.Option(
        "--random-init",
        help="Attack an untrained, randomly initialised network (seeded by --seed) on "
        "purpose; otherwise zoo, torchvision: and timm: models load pretrained weights.",
        rich_help_panel=P_MODEL,
    ),
]
IndicesOption = Annotated[
    str | None,
    typer.Option(
        "--indices",
        help="Data-set indices of the test images instead of the first --images, e.g. "
        "0:100,250,300:400 (START:STOP is STOP-exclusive); rows keep these indices.",
        rich_help_panel=P_MODEL,
        show_default=False,
    ),
]
Sha256Option = Annotated[
    str | None,
    typer.Option(
        "--sha256",
        help="SHA-256 of published weights you verified, for a checkpoint without a pinned "
        "checksum (a pinned one must agree); the downloaded or cached file is checked against it.",
        rich_help_panel=P_MODEL,
        show_default=False,
    ),
]


def download_options(download: bool, sha256: str | None) -> dict[str, Any]:
    """The model-factory keywords of --download/--sha256 (empty when neither is given)."""
    opts: dict[str, Any] = {"download": True} if download else {}
    if sha256 is not None:
        opts["sha256"] = sha256
    return opts


T = TypeVar("T")


def resolve_device(device: str) -> torch.device:
    """:func:`zoattack.device.resolve_device`, importing torch only when called."""
    from zoattack.device import resolve_device as resolve

    return resolve(device)


# --verbose lives for one invocation: set by the root command, reset when its context closes,
# so invocations in one process (tests, library callers) cannot leak it into each other.
_VERBOSE: ContextVar[bool] = ContextVar("zoattack_verbose", default=False)


def request_verbose(ctx: typer.Context, flag: bool) -> None:
    """Show tracebacks with error lines (``zoattack --verbose``) until ``ctx`` closes."""
    token = _VERBOSE.set(flag)
    ctx.call_on_close(lambda: _VERBOSE.reset(token))


def verbose_requested() -> bool:
    """Whether the running command line asked for tracebacks (False outside one)."""
    return _VERBOSE.get()


def fail(message: str) -> typer.Exit:
    """Print one clear line to stderr and return the exit to raise (code 2)."""
    # Messages quote user words such as "[grid]" or "zoattack[ray]": never markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line and exit 2; --verbose adds the traceback.

    ValueError covers invalid hyperparameters (constructors raise it naming the argument).
    """
    try:
        yield
    except (ZOAttackError, ValueError, FileNotFoundError) as exc:
        if verbose_requested():
            traceback.print_exc(file=sys.stderr)
        msg = str(exc) if not isinstance(exc, FileNotFoundError) else f"file not found: {exc}"
        raise fail(msg) from None


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator form of :func:`user_errors` for command functions."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper
