"""Locating files on disk, and the one error every loader raises when they are not there.

Nothing in zoattack downloads at run time without being asked: loaders and model adapters look
for the files first and, when they are missing, raise :class:`MissingFileError` naming the
path that was searched and the command that fetches the file. That keeps offline machines from
hanging in download retries and gives the user one actionable line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from zoattack.errors import ZOAttackError


class MissingFileError(ZOAttackError, FileNotFoundError):
    """A data set or weight file is not where zoattack looked for it.

    A :class:`FileNotFoundError` too, so ``except FileNotFoundError`` keeps working; the CLI
    prints it as one line ("file not found: WHAT: expected PATH; HOW") and exits with code 2,
    so ``what`` names the thing ("MNIST train split") without repeating "not found".
    """

    def __init__(
        self,
        what: str,
        expected: str | os.PathLike[str] | Sequence[os.PathLike[str] | str],
        how: str,
    ) -> None:
        if isinstance(expected, (str, os.PathLike)):
            where = str(expected)
        else:
            paths = [str(p) for p in expected]
            where = paths[0] if len(paths) == 1 else " or ".join(paths)
        self.what, self.expected, self.how = what, where, how
        super().__init__(f"{what}: expected {where}; {how}")

    def __str__(self) -> str:  # OSError's default str would be the bare message anyway
        return str(self.args[0])


class BadFileError(ZOAttackError, ValueError):
    """A file zoattack was pointed at exists but cannot be what it should be (random bytes, a
    truncated download, an empty file, a pickle that wants to import code).

    Files are untrusted input: every reader turns its own failure (of whatever type the parser
    raises) into this one line naming the file, what was expected and what to do.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, detail: str, how: str) -> None:
        self.path, self.what, self.detail, self.how = str(path), what, detail, how
        super().__init__(f"{shown(Path(path))} is not {what} ({detail}); {how}")


def describe(exc: BaseException) -> str:
    """One short line for a parser's exception (its first line, else its type)."""
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find_file(dirs: Iterable[Path], names: Iterable[str]) -> Path | None:
    """The first ``dir/name`` that is a file, scanning dirs in order and names within each."""
    names = list(names)
    for d in dirs:
        for n in names:
            p = Path(d) / n
            if p.is_file():
                return p
    return None


def default_data_root() -> Path:
    """Where loaders look when no ``data_dir`` is given: ``$ZOATTACK_DATA_DIR`` or ``./data``.

    ``./data`` matches the root most torchvision examples download into.
    """
    return Path(os.environ.get("ZOATTACK_DATA_DIR", "data")).expanduser()


def shown(path: Path) -> str:
    """An absolute path for error messages: a relative one is ambiguous once printed."""
    return str(Path(path).expanduser().absolute())
