"""Data sets fetched on request (``--download``) through torchvision's own dataset classes.

torchvision knows each data set's URLs (and mirrors) and the MD5 of every archive and file;
zoattack only decides where the files go and that nothing half-done is ever read as data:
torchvision downloads and extracts into a fresh temporary folder next to the destination, and
only after its checks pass (archive MD5, then its own integrity check of the extracted files)
is the result moved into place with one rename. A truncated transfer, a corrupt archive or an
interrupted extraction leaves the destination as it was.

Layouts written (what the loaders read): ``DIR/cifar-10-batches-py/``,
``DIR/MNIST/raw/``, ``DIR/FashionMNIST/raw/`` (torchvision's own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoattack.data.files import default_data_root, shown
from zoattack.errors import ZOAttackError

# registry name -> (torchvision.datasets class, folder it creates under the root, title)
FETCHABLE: dict[str, tuple[str, str, str]] = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "CIFAR-10"),
    "mnist": ("MNIST", "MNIST", "MNIST"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST", "Fashion-MNIST"),
}


class DatasetDownloadError(ZOAttackError):
    """A data set could not be fetched (offline, HTTP error, checksum or archive failure)."""


def fetchable(name: str) -> bool:
    """Whether ``--download`` can fetch the registered data set ``name``."""
    return name in FETCHABLE


def fetch_dataset(name: str, data_dir: str | Path | None = None) -> Path:
    """Download and verify data set ``name`` into ``data_dir`` (default ``$ZOATTACK_DATA_DIR``
    or ``./data``) with torchvision's dataset class; returns the folder it wrote.

    Raises:
        DatasetDownloadError: offline, a failed transfer, a checksum mismatch or a broken
            archive; one line naming the folder and what to run. ``data_dir`` is unchanged.
        ValueError: ``name`` is not one torchvision can fetch.
    """
    if name not in FETCHABLE:
        raise ValueError(
            f"--download fetches {', '.join(FETCHABLE)}; {name} has to be put in place by hand"
        )
    import torchvision.datasets as tvd  # type: ignore[import-untyped]

    cls_name, folder, title = FETCHABLE[name]
    cls = getattr(tvd, cls_name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_root()
    dest = root / folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".zoattack-download-{name}-", dir=root))
    except OSError as exc:
        raise DatasetDownloadError(
            f"cannot write {title} into {shown(root)} ({exc.strerror or exc}); pass a writable "
            "--data-dir"
        ) from None
    try:
        try:
            # torchvision prints to stdout: keep stdout for results (--json). Its progress
            # bars go to stderr, only when that is a terminal (as zoattack's own do).
            with contextlib.ExitStack() as stack:
                stack.enter_context(contextlib.redirect_stdout(sys.stderr))
                if not sys.stderr.isatty():
                    quiet = stack.enter_context(open(os.devnull, "w"))
                    stack.enter_context(contextlib.redirect_stderr(quiet))
                    stack.enter_context(contextlib.redirect_stdout(quiet))
                for train in (False, True):  # one archive (CIFAR) or all four files (MNIST)
                    cls(str(tmp), train=train, download=True)
        except Exception as exc:  # URLError, RuntimeError (MD5), tarfile/gzip errors, ...
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DatasetDownloadError(
                f"could not download {title} into {shown(root)} ({reason[:300]}); nothing was "
                f"written there. Offline? On a machine with a network run "
                f"`python -c \"import torchvision; torchvision.datasets.{cls_name}('DIR', "
                f'download=True)"` and copy DIR/{folder} to {shown(dest)}'
            ) from None
        _replace(tmp / folder, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _replace(new: Path, dest: Path) -> None:
    """Move the verified folder ``new`` to ``dest``; an old ``dest`` (incomplete, or the user's
    partial copy) is moved aside first and removed only once the new one is in place."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_or_fetch(
    load: Callable[..., Any],
    name: str,
    *,
    data_dir: str | None,
    download: bool,
    **kwargs: Any,
) -> Any:
    """``load(name, data_dir=data_dir, **kwargs)``; when its files are missing and ``download``
    is set, fetch them into ``data_dir`` (or the default root) and load again."""
    from zoattack.data.files import MissingFileError
    from zoattack.data.registry import dataset_spec
    from zoattack.data.views import split_view

    try:
        return load(name, data_dir=data_dir, **kwargs)
    except MissingFileError as exc:
        base = dataset_spec(split_view(name)[0]).name
        if not fetchable(base):
            raise
        if not download:
            raise MissingFileError(
                exc.what, exc.expected, f"{exc.how}; or rerun with --download"
            ) from None
    fetch_dataset(base, data_dir)
    return load(name, data_dir=data_dir, **kwargs)


__all__ = ["FETCHABLE", "DatasetDownloadError", "fetch_dataset", "fetchable", "load_or_fetch"]
