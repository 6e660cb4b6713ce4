"""Decode a ``{"inputs": nested lists}`` request body straight into a float64 array.

``json.loads`` builds one Python object per number and per list: 32 to 56 bytes for each two to
twenty bytes of body, so a 50 MB body of empty lists took 1.7 GB before any shape check could
refuse it. Here the body's brackets and commas are counted first (no allocation): for a batch
shaped ``(N, *input_shape)`` they are fixed by ``N``, so a body that cannot be such a batch, or
holds more than ``max_batch`` inputs, is refused before anything is built. The body is then
checked and parsed in slices of 256 KiB: every character is a number character, a bracket,
a comma or whitespace; the brackets and commas are exactly the skeleton of the declared shape;
each number sits alone between a ``[``/``,`` and a ``,``/``]``. The numbers go from each slice's
text to the output array with ``np.fromstring``. Working memory beyond the body and the result
is a few MiB (about ten times a slice).

Bodies of another form (other keys, ``npy_b64``, strings, ``true``, ``NaN``) go to ``json.loads``
only when they hold few JSON values (:data:`FALLBACK_VALUES`), so memory stays bounded there
too; small bodies this decoder refuses also go there, for the precise old messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

# Most JSON values (counted from brackets, braces, commas and colons) a body parsed with
# json.loads may hold: ~100 bytes each at most, a few MiB.
FALLBACK_VALUES = 65_536
# Bodies up to this size that the fast decoder refuses are parsed again with json.loads, so
# their refusal says exactly what is wrong (33x of 256 KiB: bounded).
SMALL_BODY = 256 * 1024
SLICE = 1 << 18  # bytes of body checked and parsed at a time (working memory ~10x this)

_PREFIX = re.compile(rb'\s*\{\s*"inputs"\s*:\s*')
_WS, _NUM, _OPEN, _CLOSE, _COMMA, _BAD = 0, 1, 2, 3, 4, 255
_CLASS = np.full(256, _BAD, np.uint8)
for _c in b" \t\n\r":
    _CLASS[_c] = _WS
for _c in b"0123456789.eE+-":
    _CLASS[_c] = _NUM
_CLASS[ord("[")], _CLASS[ord("]")], _CLASS[ord(",")] = _OPEN, _CLOSE, _COMMA
# Brackets and commas become spaces, leaving numbers separated by whitespace for fromstring.
_TO_SPACES = bytes.maketrans(b"[],", b"   ")


class NotABatch(ValueError):
    """The body is not a nested list of numbers of the declared shape; ``status`` is the HTTP
    status to answer (413 past ``max_batch``, else 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def inputs_span(body: bytes | bytearray) -> tuple[int, int] | None:
    """``(start, end)`` of the array in a body that is exactly ``{"inputs": [...]}``, else None."""
    m = _PREFIX.match(body)
    if m is None:
        return None
    end = len(body)
    while end and body[end - 1] in b" \t\n\r":
        end -= 1
    if end <= m.end() or body[end - 1] != ord("}"):
        return None
    end -= 1
    while end > m.end() and body[end - 1] in b" \t\n\r":
        end -= 1
    start = m.end()
    if end - start < 2 or body[start] != ord("[") or body[end - 1] != ord("]"):
        return None
    return start, end


def value_count(body: bytes | bytearray) -> int:
    """An upper bound on the JSON values in ``body``, without parsing it."""
    return sum(body.count(c) for c in (b"[", b"{", b",", b":")) + 1


def _skeleton(shape: Sequence[int]) -> bytes:
    """The brackets and commas of one input shaped ``shape`` written as nested lists."""
    inner = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        inner = b"[" + b",".join([inner] * size) + b"]"
    return inner


def decode_inputs(
    body: bytes | bytearray, span: tuple[int, int], shape: Sequence[int], max_batch: int
) -> np.ndarray:
    """The array ``body[span]`` spells, shaped ``(N, *shape)``; :class:`NotABatch` otherwise."""
    start, end = span
    shape = tuple(int(s) for s in shape)
    want = "(N, " + ", ".join(map(str, shape)) + ")"
    not_batch = f"inputs must be a rectangular nested list of numbers shaped {want}"
    per_input = math.prod(shape)
    lists = sum(math.prod(shape[:k]) for k in range(len(shape)))  # lists in one input
    opens = body.count(b"[", start, end)
    if opens == 1:  # "[]": an empty list, as np.asarray([]) reads it (check_batch refuses it)
        if end - start <= 64 and not bytes(body[start + 1 : end - 1]).strip():
            return np.zeros((0,), np.float64)
        raise NotABatch(not_batch)
    n, rest = divmod(opens - 1, lists)
    if rest or not per_input:
        raise NotABatch(not_batch)
    if n > max_batch:
        raise NotABatch(
            f"batch of {n} inputs exceeds this server's max batch of {max_batch}; "
            "split it (GET /info says the limits)",
            413,
        )
    if body.count(b"]", start, end) != opens or body.count(b",", start, end) != n * per_input - 1:
        raise NotABatch(not_batch)
    # The brackets and commas must read '[' Q ',' Q ',' ... Q ']' with Q one input's skeleton.
    period = np.frombuffer(_skeleton(shape) + b",", np.uint8)
    n_struct = 1 + n * len(period)  # '[' + N periods, the last ',' being the closing ']'
    out = np.empty(n * per_input, np.float64)
    got = 0  # numbers parsed so far
    seen = 0  # brackets and commas checked so far
    prev = _WS  # class of the last non-whitespace character before this slice
    prev_raw_num = False  # whether the character just before this slice is a number character
    pos = start
    while pos < end:
        stop = min(end, pos + SLICE)
        if stop < end:  # end slices on a bracket or comma, so no number is cut in two
            cut = min(
                (i for i in (body.find(b",", stop, end), body.find(b"]", stop, end)) if i >= 0),
                default=end - 1,
            )
            stop = cut + 1
        piece = bytes(memoryview(body)[pos:stop])
        cls = _CLASS[np.frombuffer(piece, np.uint8)]
        if (cls == _BAD).any():
            raise NotABatch(not_batch)
        raw_num = cls == _NUM
        raw_starts = int(raw_num[0] and not prev_raw_num) + int(
            np.count_nonzero(raw_num[1:] & ~raw_num[:-1])
        )
        prev_raw_num = bool(raw_num[-1])
        del raw_num
        solid = cls[cls != _WS]
        del cls
        if not len(solid):
            pos = stop
            continue
        before = np.empty_like(solid)
        before[0], before[1:] = prev, solid[:-1]
        is_num = solid == _NUM
        was_num = before == _NUM
        starts = is_num & ~was_num
        # Whitespace may not separate two number characters ("1 2" is two numbers in one slot).
        if int(np.count_nonzero(starts)) != raw_starts:
            raise NotABatch(not_batch)
        # A number follows '[' or ','; what follows a number is ',' or ']'.
        after_num = before[starts]
        if not ((after_num == _OPEN) | (after_num == _COMMA)).all():
            raise NotABatch(not_batch)
        ends = solid[was_num & ~is_num]
        if not ((ends == _CLOSE) | (ends == _COMMA)).all():
            raise NotABatch(not_batch)
        del after_num, ends, before, was_num
        struct = solid[~is_num]
        k = len(struct)
        if seen + k > n_struct:
            raise NotABatch(not_batch)
        idx = (np.arange(seen, seen + k) - 1) % len(period)
        expect = period[idx]
        if seen == 0:
            expect[0] = ord("[")
        if seen + k == n_struct:
            expect[-1] = ord("]")
        chars = np.array([0, 0, ord("["), ord("]"), ord(",")], np.uint8)[struct]
        if not np.array_equal(chars, expect):
            raise NotABatch(not_batch)
        seen += k
        prev = int(solid[-1])
        m = int(np.count_nonzero(starts))
        if m:
            if got + m > len(out):
                raise NotABatch(not_batch)
            try:
                values = np.fromstring(piece.translate(_TO_SPACES), dtype=np.float64, sep=" ")
            except ValueError:
                raise NotABatch(not_batch) from None
            if len(values) != m:
                raise NotABatch(not_batch)
            out[got : got + m] = values
            got += m
        pos = stop
    if seen != n_struct or got != len(out):
        raise NotABatch(not_batch)
    return out.reshape((n, *shape))
