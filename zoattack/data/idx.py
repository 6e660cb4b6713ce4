"""Reading and writing the IDX format of (Fashion-)MNIST, gzip-compressed or not.

Our own few lines instead of torchvision's private reader: torchvision only reads the
decompressed files under ``root/<Name>/raw/``, while Debian ships the ``.gz`` files, and tests
need a writer for tiny fixtures.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from zoattack.data.files import BadFileError, describe

_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array stored in an IDX file; only the first ``limit`` records are read when given.

    Compression is detected from the gzip magic bytes, not the file name.
    """
    path = Path(path)
    what = "an IDX file ((Fashion-)MNIST images or labels)"
    how = "download the data set again, or point --data-dir at a good copy"
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] not in _DTYPES:
                raise BadFileError(path, what, f"bad magic number {header!r}", how)
            dtype = np.dtype(_DTYPES[header[2]])  # type: ignore[call-overload]
            ndim = header[3]
            packed = f.read(4 * ndim)
            if len(packed) != 4 * ndim:
                raise BadFileError(path, what, "truncated header", how)
            dims = list(struct.unpack(f">{ndim}I", packed))
            if limit is not None and dims:
                dims[0] = min(dims[0], limit)
            count = math.prod(dims) if dims else 1
            # Read what the header claims only in bounded steps: a lying header must not
            # allocate gigabytes before the file turns out to be short.
            raw = _read_at_most(f, count * dtype.itemsize)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise BadFileError(path, what, describe(exc), how) from None
    if len(raw) != count * dtype.itemsize:
        raise BadFileError(path, what, f"truncated: expected {count} values of shape {dims}", how)
    return np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_at_most(f: Any, size: int, step: int = 1 << 24) -> bytes:
    parts, left = [], size
    while left > 0:
        part = f.read(min(step, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8 or int8) as IDX; gzip when ``compress`` or the name ends in .gz."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise ValueError(f"write_idx supports uint8/int8 arrays, got {array.dtype}")
    payload = (
        bytes([0, 0, _CODES[array.dtype], array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path
