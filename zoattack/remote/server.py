"""The HTTP score server behind `zoattack serve` (FastAPI), and a background runner for it.

Protocol (version 1):

* ``GET /health`` → ``{"status": "ok"}`` (never needs the token: it is for load balancers).
* ``GET /info`` → what the model takes and returns: ``input_shape``, ``num_classes``, ``output``
  (``logits``, ``probs`` or ``labels``), ``max_batch``, ``max_bytes``, accepted formats.
* ``GET /stats`` → the server-side ledger: ``scored_inputs`` (each input scored once, however
  often its request was retried), ``requests``, ``replayed``, ``rejected``.
* ``POST /score`` with a batch ``(N, *input_shape)`` of floats in [0, 1], as any of

  - ``application/x-npy`` (or ``application/octet-stream``): a ``.npy`` file, float16/32/64;
  - ``application/json``: ``{"inputs": nested lists}`` or ``{"npy_b64": base64 of a .npy}``.

  The reply is JSON ``{"output": ..., "n": N, "scores": nested lists}``, or a ``.npy`` when the
  request says ``Accept: application/x-npy`` (float32 scores; int64 labels).

Retries are safe: a request carrying an ``Idempotency-Key`` header that the server has already
answered is answered again from a bounded cache and not scored (nor counted) a second time, so
a client that retries after a lost reply keeps its count equal to the server's.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time,
# and `Request` is imported inside create_app so that importing this module needs no FastAPI.
import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

PROTOCOL = 1
NPY = "application/x-npy"
OUTPUTS = ("logits", "probs", "labels")
DEFAULT_MAX_BATCH = 4096  # = `zoattack run --max-batch`: same batches, bit-identical scores
DEFAULT_MAX_BYTES = 64 * 2**20
# Seconds a client has to send a whole request body once its headers are in (408 after): a
# client that stops half way must not hold memory or a slot for ever. 64 MiB in 30 s is
# ~18 Mbit/s; raise it (`zoattack serve --body-timeout`) for larger bodies over slow links.
DEFAULT_BODY_TIMEOUT = 30.0
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: same format and --log-level
# Pixel values may carry float rounding from the attacker's projection onto the box.
RANGE_TOL = 1e-6


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status and one line for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServerStats:
    scored_inputs: int = 0
    requests: int = 0
    replayed: int = 0
    rejected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {
                "scored_inputs": self.scored_inputs,
                "requests": self.requests,
                "replayed": self.replayed,
                "rejected": self.rejected,
            }


def decode_batch(
    body: bytes | bytearray,
    content_type: str,
    input_shape: Sequence[int] | None = None,
    max_batch: int | None = None,
) -> np.ndarray:
    """The request body as an array (range checks come later, in :func:`check_batch`).

    A ``.npy`` body's header is checked against ``input_shape`` and ``max_batch`` and against
    the bytes actually sent before anything is allocated: a header may claim any shape.
    """
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in (NPY, "application/octet-stream"):
        return _load_npy(body, "the request body", input_shape, max_batch)
    if ctype in ("application/json", ""):
        return _decode_json(body, input_shape, max_batch)
    raise BadRequest(415, f"unsupported Content-Type {ctype!r}; send application/json or {NPY}")


def _decode_json(
    body: bytes | bytearray, input_shape: Sequence[int] | None, max_batch: int | None
) -> np.ndarray:
    """A JSON body as an array, building no Python object per number (see jsonbody.py)."""
    from zoattack.remote.jsonbody import (
        FALLBACK_VALUES,
        SMALL_BODY,
        NotABatch,
        decode_inputs,
        inputs_span,
        value_count,
    )

    span = inputs_span(body) if input_shape is not None else None
    if span is not None:
        try:
            return decode_inputs(body, span, input_shape or (), max_batch or 2**62)
        except NotABatch as exc:
            if len(body) > SMALL_BODY:
                raise BadRequest(exc.status, str(exc)) from None
            # Small: json.loads below says exactly what is wrong, or reads what the fast
            # decoder does not (true, NaN, ...), as it always has.
    elif len(body) > SMALL_BODY and value_count(body) > FALLBACK_VALUES:
        raise BadRequest(
            413,
            f"JSON body holds over {FALLBACK_VALUES:,} values and is not "
            '{"inputs": [...]} alone; send {"inputs": nested lists of numbers} with no other '
            f"keys, or {NPY}",
        )
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError also covers bad UTF-8 and integers too long to parse.
        raise BadRequest(400, f"the body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or not ({"inputs", "npy_b64"} & payload.keys()):
        raise BadRequest(
            400,
            'JSON body must be {"inputs": [[...]]} (nested lists, batch '
            'first) or {"npy_b64": "<base64 of a .npy file>"}',
        )
    if "npy_b64" in payload:
        try:
            raw = base64.b64decode(payload["npy_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadRequest(400, "npy_b64 is not valid base64") from None
        del payload
        return _load_npy(raw, "npy_b64", input_shape, max_batch)
    try:
        arr = np.asarray(payload["inputs"], dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest(
            422, "inputs must be a rectangular nested list of numbers (batch, *input_shape)"
        ) from None
    return arr


def _load_npy(
    raw: bytes | bytearray,
    what: str,
    input_shape: Sequence[int] | None = None,
    max_batch: int | None = None,
) -> np.ndarray:
    """A ``.npy`` body as an array, refused from its header alone when it cannot be right.

    ``np.load`` on a byte buffer allocates the whole array the header declares before reading
    the data, so a 100-byte body claiming a billion images was a MemoryError (HTTP 500). The
    header is read first; shape, dtype and size are checked against the caps and against the
    bytes actually sent, and the data is then viewed in place.
    """
    from numpy.lib import format as npy_format

    buf = io.BytesIO(raw)
    try:
        version = npy_format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadRequest(400, f"{what} is not a readable .npy array ({detail})") from None
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise BadRequest(422, f"inputs must be floating point (float16/32/64), got {dtype}")
    dims = tuple(int(d) for d in shape)
    if input_shape is not None:
        want = tuple(int(d) for d in input_shape)
        if len(dims) != len(want) + 1 or dims[1:] != want:
            head = "(N, " + ", ".join(map(str, want)) + ")"
            hint = "; wrap a single input in a batch of one" if dims == want else ""
            raise BadRequest(422, f"inputs must be shaped {head}, got {dims}{hint}")
    if max_batch is not None and dims and dims[0] > max_batch:
        raise BadRequest(
            413,
            f"batch of {dims[0]} inputs exceeds this server's max batch of {max_batch}; "
            "split it (GET /info says the limits)",
        )
    count = math.prod(dims)
    offset = buf.tell()
    if count * dtype.itemsize != len(raw) - offset:
        raise BadRequest(
            400,
            f"{what} declares {dims} {dtype} ({count * dtype.itemsize:,} bytes of data) but "
            f"holds {len(raw) - offset:,}; send the whole .npy file",
        )
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    arr = flat.reshape(dims, order="F" if fortran else "C")
    # The server reads bodies into a bytearray: a writable view of it is used in place (no
    # second copy of the body); read-only bytes are copied so the caller gets its own array.
    return arr if arr.flags.writeable else arr.copy()


def check_batch(arr: np.ndarray, input_shape: Sequence[int], max_batch: int) -> np.ndarray:
    """Shape, dtype, size, finiteness and range checks; returns float32 inputs."""
    shape = tuple(input_shape)
    if arr.dtype.kind != "f":
        raise BadRequest(422, f"inputs must be floating point (float16/32/64), got {arr.dtype}")
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        want = "(N, " + ", ".join(map(str, shape)) + ")"
        hint = "; wrap a single input in a batch of one" if tuple(arr.shape) == shape else ""
        raise BadRequest(422, f"inputs must be shaped {want}, got {tuple(arr.shape)}{hint}")
    if arr.shape[0] > max_batch:
        raise BadRequest(
            413,
            f"batch of {arr.shape[0]} inputs exceeds this server's max batch "
            f"of {max_batch}; split it (GET /info says the limits)",
        )
    if arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(axis=1).sum())
        raise BadRequest(422, f"inputs contain NaN or inf ({bad} of {arr.shape[0]} inputs)")
    if arr.size and (float(arr.min()) < -RANGE_TOL or float(arr.max()) > 1 + RANGE_TOL):
        raise BadRequest(
            422,
            f"inputs must lie in [0, 1], got range [{float(arr.min()):.4g}, "
            f"{float(arr.max()):.4g}]; normalisation happens inside the model",
        )
    return arr.astype(np.float32, copy=False)


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class Scorer:
    """The model behind the endpoints: one forward at a time (the model's own intra-op threads
    use the cores; concurrent forwards would only fight over them), counted once per input."""

    def __init__(self, model: nn.Module, output: str, device: torch.device) -> None:
        self.model = model.eval()
        self.output = output
        self.device = device
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock, torch.inference_mode():
            raw = self.model(torch.from_numpy(x).to(self.device)).float()
            if raw.dim() != 2 or raw.shape[0] != x.shape[0]:
                raise BadRequest(
                    500,
                    f"the served model returned shape {tuple(raw.shape)} for "
                    f"{x.shape[0]} inputs; it must return (batch, classes)",
                )
            if self.output == "probs":
                return torch.softmax(raw, dim=1).cpu().numpy()
            if self.output == "labels":
                return raw.argmax(dim=1).cpu().numpy().astype(np.int64)
            return raw.cpu().numpy()


class _ByteBudget:
    """Bytes of request bodies the server holds at once: ``hold(n)`` waits until ``n`` more fit.

    Each request reserves its declared size before its body is read, all of it at once (a
    reservation in steps could leave every reader holding part and waiting for the rest).
    Made lazily in the event loop that uses it.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        n = min(n, self.total)
        async with cond:
            await cond.wait_for(lambda: self.used + n <= self.total)
            self.used += n
        try:
            yield
        finally:
            async with cond:
                self.used -= n
                cond.notify_all()


def create_app(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    output: Literal["logits", "probs", "labels"] = "logits",
    token: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_bytes: int = DEFAULT_MAX_BYTES,
    device: str | torch.device = "cpu",
    name: str = "model",
    dataset: str | None = None,
    replay_cache: int = 1024,
    replay_bytes: int = 64 * 2**20,
    max_inflight: int = 4,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> Any:
    """A FastAPI app scoring batches with ``model`` (images in [0, 1] → ``(N, classes)``).

    ``app.state.stats`` is the server-side ledger (:class:`ServerStats`); ``app.state.info``
    what ``GET /info`` answers. The last ``replay_cache`` replies (at most ``replay_bytes``)
    are kept for requests retried with the same ``Idempotency-Key``.

    Memory and slots: a request reserves its declared body size (``max_bytes`` when it
    sends no Content-Length) from a budget of ``max_inflight * max_bytes`` bytes before its
    body is read, and waits unread (the transport's flow control holds it back) while the
    budget is spent. A body must arrive whole within ``body_timeout`` seconds (408
    otherwise, and the connection is closed). Only a complete body takes one of the
    ``max_inflight`` decode-and-score slots, so clients that stop sending hold no slot and a
    few bytes of budget. Decoding builds no Python object per number (``.npy`` is viewed in
    place; JSON goes through :mod:`zoattack.remote.jsonbody`), so the bodies in hand and
    their arrays stay within a small multiple of ``max_inflight * max_bytes`` (see
    docs/notes/serve24.md for the measured bound).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    if output not in OUTPUTS:
        raise ValueError(f"output must be logits, probs or labels, got {output!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_bytes < 1024:
        raise ValueError(f"max_bytes must be >= 1024, got {max_bytes}")
    if max_inflight < 1:
        raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
    if not 0 < body_timeout < math.inf:
        raise ValueError(f"body_timeout must be a positive number of seconds, got {body_timeout}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    shape = tuple(int(s) for s in input_shape)
    scorer = Scorer(model, output, torch.device(device))
    stats = ServerStats()
    # Idempotency-Key -> (body, media type, n) of answered requests, replayed to retries. The
    # check, the forward and the store happen under one lock in the worker thread, so even a
    # request whose client gave up (its handler may be cancelled) is cached before a retry looks.
    replies: OrderedDict[str, tuple[bytes, str, int]] = OrderedDict()
    replies_lock = threading.Lock()
    inflight: dict[str, threading.Lock] = {}
    gate: list[asyncio.Semaphore] = []  # made in the server's event loop, on first use
    budget = _ByteBudget(max_inflight * max_bytes)
    held = [0]  # bytes in replies

    # With a token, the schema is served behind it and the browser pages are off: /docs and
    # /redoc fetch /openapi.json without the header, so they could only show an error.
    app = FastAPI(
        docs_url=None if token else "/docs",
        redoc_url=None if token else "/redoc",
        openapi_url=None if token else "/openapi.json",
        title="zoattack score server",
        description="Scores batches of [0, 1] images with a zoattack model. Each "
        "scored input is counted once (see /stats); retried requests "
        "with the same Idempotency-Key are replayed, not re-scored.",
        version=str(PROTOCOL),
    )
    app.state.stats = stats
    info = {
        "protocol": PROTOCOL,
        "model": name,
        "dataset": dataset,
        "input_shape": list(shape),
        "num_classes": int(num_classes),
        "output": output,
        "max_batch": int(max_batch),
        "max_bytes": int(max_bytes),
        "formats": ["application/json", NPY],
        "auth": token is not None,
    }
    app.state.info = info

    def refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        with stats.lock:
            stats.rejected += 1
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    def unauthorized() -> Any:
        return refuse(
            401,
            "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' "
            "(the token `zoattack serve` was started with)",
            {"WWW-Authenticate": "Bearer"},
        )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def get_info(request: Request) -> Any:
        return info if authorized(request) else unauthorized()

    @app.get("/stats")
    def get_stats(request: Request) -> Any:
        return stats.as_dict() if authorized(request) else unauthorized()

    if token:

        @app.get("/openapi.json", include_in_schema=False)
        def openapi(request: Request) -> Any:
            return app.openapi() if authorized(request) else unauthorized()

    async def read_body(request: Request, size: int | None) -> bytearray:
        """The whole body (``size``: its declared length), or BadRequest 413/408."""
        body = bytearray(size) if size is not None else bytearray()
        got = 0
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    if not chunk:
                        continue
                    if got + len(chunk) > max_bytes or (
                        size is not None and got + len(chunk) > size
                    ):
                        raise BadRequest(
                            413,
                            f"request body exceeds this server's limit of "
                            f"{max_bytes:,} bytes; send smaller batches",
                        )
                    if size is not None:
                        body[got : got + len(chunk)] = chunk
                    else:
                        body += chunk
                    got += len(chunk)
        except TimeoutError:
            of = f" of {size:,}" if size is not None else ""
            raise BadRequest(
                408,
                f"the request body did not arrive within {body_timeout:g} s (got {got:,}{of} "
                "bytes); send it whole without pausing",
            ) from None
        if size is not None and got != size:
            raise BadRequest(400, f"the body ended after {got:,} of {size:,} declared bytes")
        return body

    def encode_scores(scores: np.ndarray, want_npy: bool) -> tuple[bytes, str, int]:
        if want_npy:
            return encode_npy(scores), NPY, len(scores)
        body_out = json.dumps({"output": output, "n": len(scores), "scores": scores.tolist()})
        return body_out.encode(), "application/json", len(scores)

    def forward(x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(
                (0,) if output == "labels" else (0, num_classes),
                np.int64 if output == "labels" else np.float32,
            )
        scores = scorer(x)
        if scores.ndim == 2 and scores.shape[1] != num_classes:
            raise BadRequest(
                500,
                f"the served model returned {scores.shape[1]} classes, the "
                f"server announced {num_classes}",
            )
        with stats.lock:
            stats.scored_inputs += len(x)
        return scores

    def handle(
        body: bytes | bytearray, content_type: str, want_npy: bool, key: str | None
    ) -> tuple[tuple[bytes, str, int], bool]:
        """(reply, replayed) for one request; runs in a worker thread."""
        if key is None:
            x = check_batch(decode_batch(body, content_type, shape, max_batch), shape, max_batch)
            return encode_scores(forward(x), want_npy), False
        with replies_lock:
            if key in replies:
                replies.move_to_end(key)
                return replies[key], True
            # One lock per key in flight: racing attempts of the same request score it once,
            # while other requests' forwards (and refusals, replays) never wait behind it.
            key_lock = inflight.setdefault(key, threading.Lock())
        x = check_batch(decode_batch(body, content_type, shape, max_batch), shape, max_batch)
        with key_lock:
            with replies_lock:
                if key in replies:  # a racing attempt of the same request got there first
                    return replies[key], True
            try:
                reply = encode_scores(forward(x), want_npy)
            finally:
                with replies_lock:
                    inflight.pop(key, None)
            with replies_lock:
                replies[key] = reply
                held[0] += len(reply[0])
                # Retries come within seconds: a short memory, bounded in entries and bytes.
                while len(replies) > replay_cache or (held[0] > replay_bytes and len(replies) > 1):
                    held[0] -= len(replies.popitem(last=False)[1][0])
            return reply, False

    @app.post(
        "/score",
        summary="Score a batch of images",
        description="Body: application/x-npy (a .npy batch) or JSON "
        '{"inputs": nested lists} / {"npy_b64": "..."}; values in [0, 1]. '
        "Optional header Idempotency-Key makes retries safe. Reply: JSON "
        "scores, or .npy with Accept: application/x-npy.",
    )
    async def score(request: Request) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import ClientDisconnect

        with stats.lock:
            stats.requests += 1
        if not authorized(request):
            return unauthorized()
        if not gate:
            gate.append(asyncio.Semaphore(max_inflight))
        declared = request.headers.get("content-length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is not None and size > max_bytes:
            return refuse(
                413,
                f"request body of {size:,} bytes exceeds this "
                f"server's limit of {max_bytes:,}; send smaller batches",
            )
        reserved = max_bytes if size is None else size
        try:
            async with budget.hold(reserved):
                body = await read_body(request, size)
                # Only a whole body takes a slot: slow senders must not starve the scorer.
                async with gate[0]:
                    (data, media, n), replayed = await run_in_threadpool(
                        handle,
                        body,
                        request.headers.get("content-type", ""),
                        NPY in request.headers.get("accept", ""),
                        request.headers.get("idempotency-key"),
                    )
                del body
        except BadRequest as exc:
            if exc.status == 408:
                client = request.client
                log.warning(
                    "408 from %s: %s", f"{client.host}:{client.port}" if client else "?", exc
                )
                # Close: the rest of the body may still come, and nobody waits for it.
                return refuse(exc.status, exc.message, {"Connection": "close"})
            return refuse(exc.status, exc.message)
        except ClientDisconnect:
            client = request.client
            log.warning(
                "client %s disconnected before sending the whole request body",
                f"{client.host}:{client.port}" if client else "?",
            )
            with stats.lock:
                stats.rejected += 1
            return Response(status_code=400)  # nobody is there to read it
        headers = {"X-Scored-Inputs": str(n)}
        if replayed:
            with stats.lock:
                stats.replayed += 1
            headers["X-Replayed"] = "1"
        return Response(data, media_type=media, headers=headers)

    return app


def model_server_app(
    model_name: str = "small_cnn",
    dataset: str = "fashion-mnist",
    *,
    weights: str | None = None,
    model_dir: str | None = None,
    data_dir: str | None = None,
    images: int = 100,
    device: str | torch.device = "cpu",
    **app_kwargs: Any,
) -> Any:
    """Build the model exactly as `zoattack run` does (same data set statistics, pretrained
    weights when no ``weights`` is given) and wrap it in :func:`create_app`."""
    from zoattack.data import load_dataset
    from zoattack.models import create_model, default_pretrained

    if model_name.startswith("remote:"):
        raise ValueError(
            "serving a remote:URL model would only proxy another server; serve "
            "a local model (zoo name, torchvision:/timm:/robustbench:NAME)"
        )
    data = load_dataset(dataset, split="test", data_dir=data_dir, limit=images)
    model = create_model(
        model_name,
        dataset=data,
        weights=weights,
        model_dir=model_dir,
        pretrained=default_pretrained(model_name, weights),
        device=device,
    )
    return create_app(
        model,
        input_shape=data.image_shape,
        num_classes=data.num_classes,
        device=device,
        name=model_name,
        dataset=data.name,
        **app_kwargs,
    )


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket (port 0: a free one, with no race against other binders)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only turns Nagle off (TCP_NODELAY) for sockets that
    # say they are TCP, and with Nagle on every keep-alive reply waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another "
            "--port or stop what is using it"
        ) from None
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """Runs an ASGI app under uvicorn in a daemon thread (tests, benchmarks, notebooks).

    Use as a context manager; ``url`` is ``http://HOST:PORT``. ``stop()`` waits for
    in-flight requests for at most ``grace`` seconds, then drops them.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "critical",
        grace: float = 2.0,
    ) -> None:
        import uvicorn

        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self._run, daemon=True, name=f"zoattack-serve-{self.port}"
        )
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start()
            self.error = exc

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"the server thread died: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
