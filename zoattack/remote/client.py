"""Models behind HTTP: ``--model remote:http://HOST:PORT`` and an adapter for other score APIs.

A remote model is an ``nn.Module`` without parameters whose forward sends the batch over HTTP
and returns the scores, so :class:`zoattack.blackbox.BlackBox` counts its queries exactly as it
counts a local model's: once per scored input, whatever happened on the wire.

What happens on the wire:

* micro-batching: a call is split into requests of at most the server's ``max_batch`` inputs
  (and ``max_bytes``), sent in order over one pooled keep-alive connection (httpx);
* retries with exponential backoff and jitter on timeouts, connection failures, 5xx/429 and
  malformed replies. Every attempt of a request carries the same ``Idempotency-Key``, so a
  server that scored a request whose reply got lost answers the retry from its cache instead of
  scoring (and counting) it again;
* an optional rate limit (``max_rps`` requests per second);
* validation of every reply: shape, NaN/inf, probabilities in [0, 1] summing to one, labels in
  range. NaN scores are not retried (a model that returns them will again).

``scored_inputs`` counts the inputs whose scores arrived and passed validation; against
`zoattack serve` it equals the server's ``/stats`` counter and the BlackBox ledger.
A request that exhausts its retries raises :class:`RemoteError` (a ``ZOAttackError``): the
attack stops with every finished image kept, and `zoattack run --resume` continues later.

Defaults come from the keyword arguments, else the environment (``ZOATTACK_TOKEN``,
``ZOATTACK_REMOTE_TIMEOUT``, ``ZOATTACK_REMOTE_RETRIES``, ``ZOATTACK_REMOTE_BACKOFF``,
``ZOATTACK_REMOTE_MAX_RPS``), else timeout 30 s, 5 retries, 0.25 s first backoff, no rate limit.
"""

from __future__ import annotations

import collections
import io
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoattack.errors import InvalidInputError, InvalidScoresError, ZOAttackError

NPY = "application/x-npy"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
PROB_TOL = 1e-3  # float16/rounded probabilities still sum to one within this


class RemoteError(ZOAttackError):
    """The remote model is unreachable, refused a request, or kept failing after retries."""


class RemoteScoresError(RemoteError, InvalidScoresError):
    """The remote model answered with scores that cannot be right (NaN, bad probabilities)."""


class MalformedReply(Exception):
    """A reply that could not be decoded (retried: it may have been cut or garbled)."""


def _env(name: str, cast: type, default: Any) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a valid {cast.__name__}"
        ) from None


class RateLimiter:
    """At most ``rps`` acquisitions per second, spaced evenly (thread-safe)."""

    def __init__(self, rps: float) -> None:
        if not rps > 0:
            raise ValueError(f"max_rps must be > 0, got {rps}")
        self.interval = 1.0 / rps
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            time.sleep(at - now)


def _transport_settings(
    timeout: float | None, retries: int | None, backoff: float | None
) -> tuple[float, int, float]:
    """Timeout, retries and first backoff: arguments, else environment, else defaults."""
    t = float(timeout if timeout is not None else _env("ZOATTACK_REMOTE_TIMEOUT", float, 30.0))
    r = int(retries if retries is not None else _env("ZOATTACK_REMOTE_RETRIES", int, 5))
    b = float(backoff if backoff is not None else _env("ZOATTACK_REMOTE_BACKOFF", float, 0.25))
    if not t > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {t}")
    if r < 0:
        raise ValueError(f"retries must be >= 0, got {r}")
    if b < 0:
        raise ValueError(f"backoff must be >= 0 seconds, got {b}")
    return t, r, b


def _check_url(url: str) -> str:
    import httpx

    hint = "use remote:http://HOST:PORT, e.g. remote:http://127.0.0.1:8000"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise RemoteError(f"bad remote URL {url!r}; {hint}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RemoteError(f"bad remote URL {url!r} (needs http:// or https:// and a host); {hint}")
    return url.rstrip("/")


def _detail(resp: Any) -> str:
    """The server's one-line reason (FastAPI's ``detail``), else the start of the body."""
    try:
        detail = resp.json().get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)[:200]
    except Exception:
        pass
    text = resp.text.strip().replace("\n", " ")
    return text[:200] or resp.reason_phrase


class HTTPScoreModel(nn.Module):
    """Shared machinery of HTTP-backed models: pooled client, micro-batching, retries with
    backoff and jitter, rate limit, reply validation and the count of confirmed inputs.

    Subclasses say how a batch goes on the wire (:meth:`encode`) and how scores come back
    (:meth:`decode`). Inputs are ``(N, *input_shape)`` in [0, 1]; ``forward`` returns
    ``(N, num_classes)`` float scores on ``device`` (labels become one-hot rows).
    """

    def __init__(
        self,
        url: str,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        output: str = "logits",
        max_batch: int = 256,
        max_bytes: int | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        backoff_max: float = 8.0,
        max_rps: float | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__()
        import httpx

        self.url = _check_url(url)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        if output not in ("logits", "probs", "labels"):
            raise ValueError(f"output must be logits, probs or labels, got {output!r}")
        self.output = output
        self.timeout, self.retries, self.backoff = _transport_settings(timeout, retries, backoff)
        self.backoff_max = float(backoff_max)
        rps = max_rps if max_rps is not None else _env("ZOATTACK_REMOTE_MAX_RPS", float, None)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self.max_bytes = max_bytes
        self.limiter = RateLimiter(float(rps)) if rps else None
        self.token = token if token is not None else (os.environ.get("ZOATTACK_TOKEN") or None)
        self.device = torch.device(device)
        # Jitter only spreads retries in time; it never touches results, hence its own RNG.
        self._jitter = random.Random(seed)
        self._lock = threading.Lock()
        self.scored_inputs = 0
        self.requests = 0
        self.retried = 0
        # Why the most recent retries happened (newest last): what a user asks after a slow run.
        self.retry_reasons: collections.deque[str] = collections.deque(maxlen=20)
        hdrs = dict(headers or {})
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(
            headers=hdrs,
            timeout=self.timeout,
            verify=verify,
            limits=httpx.Limits(max_keepalive_connections=8, max_connections=16),
        )
        self.eval()  # nothing to train; BlackBox expects eval mode

    # ------------------------------------------------------------- subclass API
    def encode(self, x: np.ndarray) -> dict[str, Any]:
        """httpx ``request`` keyword arguments (method, url, content/json, headers) for ``x``."""
        raise NotImplementedError

    def decode(self, response: Any, n: int) -> np.ndarray:
        """Scores ``(n, classes)`` (labels: ``(n,)``) from a 2xx reply; raise
        :class:`MalformedReply` when the body cannot be read."""
        raise NotImplementedError

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise InvalidInputError(
                f"inputs have per-example shape {tuple(x.shape[1:])}, the remote model at "
                f"{self.url} takes {self.input_shape}"
            )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.batch_limit()
        parts = [self.score_batch(arr[i : i + step]) for i in range(0, len(arr), step)]
        empty = (0,) if self.output == "labels" else (0, self.num_classes)
        scores = np.concatenate(parts) if parts else np.zeros(empty, np.float32)
        if self.output == "labels":
            scores = np.eye(self.num_classes, dtype=np.float32)[scores.astype(np.int64)]
        return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)).to(self.device)

    def batch_limit(self) -> int:
        step = self.max_batch
        if self.max_bytes:
            per_input = 4 * int(np.prod(self.input_shape))
            step = min(step, max(1, (self.max_bytes - 1024) // per_input))
        return step

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        """One request (with retries) for at most :meth:`batch_limit` inputs."""
        n = len(x)
        key = uuid.uuid4().hex  # the same for every attempt: the server replays, not re-scores
        request = self.encode(x)
        request.setdefault("headers", {})["Idempotency-Key"] = key
        last = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                    self.retry_reasons.append(last)
                time.sleep(self._delay(attempt, retry_after))
                retry_after = None
            if self.limiter is not None:
                self.limiter.wait()
            with self._lock:
                self.requests += 1
            try:
                resp = self._http.request(**request)
            except Exception as exc:  # httpx.TimeoutException, TransportError, ...
                last = self._transport_reason(exc)
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_detail(resp)}"
                retry_after = self._retry_after(resp)
                continue
            if resp.status_code >= 400:
                raise RemoteError(self._refusal(resp, n))
            try:
                scores = self.decode(resp, n)
                self._check_shape(scores, n)
            except MalformedReply as exc:
                last = f"malformed reply ({exc})"
                continue
            self._check_values(scores, n)
            with self._lock:
                self.scored_inputs += n
            return scores
        raise RemoteError(
            f"the remote model at {self.url} failed {self.retries + 1} attempts "
            f"at a batch of {n} inputs (last: {last}); check that the server is up"
        )

    # --------------------------------------------------------------- helpers
    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
        if retry_after is not None:
            base = max(base, min(retry_after, self.backoff_max))
        return base * (0.5 + self._jitter.random())

    @staticmethod
    def _retry_after(resp: Any) -> float | None:
        raw = resp.headers.get("retry-after")
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    def _transport_reason(self, exc: Exception) -> str:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return f"no reply within {self.timeout:g} s ({type(exc).__name__})"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect ({exc})"
        if isinstance(exc, httpx.HTTPError):
            return f"connection failed ({type(exc).__name__}: {exc})"
        raise exc  # not a transport problem: a bug, let it surface

    def _refusal(self, resp: Any, n: int) -> str:
        code = resp.status_code
        hint = {
            401: "pass the server's token (--token or ZOATTACK_TOKEN)",
            403: "the token is not allowed to score",
            404: f"{self.url} does not serve this endpoint; check the URL",
            413: "the batch is too large for the server; lower --max-batch",
            415: "the server does not accept this body format",
            422: "the server rejected the inputs",
        }.get(code, "see the server's log")
        return (
            f"the remote model at {self.url} refused a batch of {n} inputs: HTTP {code}: "
            f"{_detail(resp)} ({hint})"
        )

    def _check_shape(self, scores: np.ndarray, n: int) -> None:
        want = (n,) if self.output == "labels" else (n, self.num_classes)
        if tuple(scores.shape) != want:
            raise MalformedReply(f"scores shaped {tuple(scores.shape)}, expected {want}")

    def _check_values(self, scores: np.ndarray, n: int) -> None:
        if self.output == "labels":
            if scores.dtype.kind == "f" and not np.array_equal(scores, np.round(scores)):
                raise RemoteScoresError(
                    f"the remote model at {self.url} returned non-integer "
                    "labels; is its output really labels?"
                )
            if n and (scores.min() < 0 or scores.max() >= self.num_classes):
                raise RemoteScoresError(
                    f"the remote model at {self.url} returned labels outside "
                    f"[0, {self.num_classes - 1}]"
                )
            return
        finite = np.isfinite(scores)
        if not finite.all():
            bad = int((~finite).any(axis=1).sum())
            raise RemoteScoresError(
                f"the remote model at {self.url} returned NaN/inf scores for "
                f"{bad} of {n} inputs; check the served model"
            )
        if self.output == "probs" and n:
            sums = scores.sum(axis=1, dtype=np.float64)
            if (
                scores.min() < -PROB_TOL
                or scores.max() > 1 + PROB_TOL
                or np.abs(sums - 1).max() > PROB_TOL
            ):
                raise RemoteScoresError(
                    f"the remote model at {self.url} is declared to return probabilities but "
                    f"its rows sum to {sums.min():.4g}..{sums.max():.4g}; set output='logits' "
                    "if they are raw scores"
                )

    def server_stats(self) -> dict[str, Any]:
        """The server's own counters (`zoattack serve` answers ``GET /stats``)."""
        resp = self._http.get(f"{self.url}/stats")
        if resp.status_code != 200:
            raise RemoteError(f"{self.url}/stats answered HTTP {resp.status_code}: {_detail(resp)}")
        return resp.json()

    def close(self) -> None:
        self._http.close()

    @property
    def output_kind(self) -> str:
        """What the remote model really answers (``logits``, ``probs`` or ``labels``).

        :class:`zoattack.blackbox.BlackBox` reads it: labels arrive here as one-hot rows, which
        must never be mistaken for scores by a score-based attack.
        """
        return self.output

    def extra_repr(self) -> str:
        return (
            f"url={self.url!r}, input_shape={self.input_shape}, classes={self.num_classes}, "
            f"output={self.output}, max_batch={self.max_batch}"
        )


class RemoteModel(HTTPScoreModel):
    """A model served by `zoattack serve` (protocol of :mod:`zoattack.remote.server`).

    The server is probed at construction (``/health``, ``/info``): input shape, classes, output
    kind and limits come from it. ``wire`` picks the body format: ``"npy"`` (binary, default)
    or ``"json"``; ``wire_dtype="float16"`` halves the bytes but rounds the inputs, so results
    then differ slightly from an in-process attack.
    """

    def __init__(
        self,
        url: str,
        *,
        dataset: Any = None,
        wire: str = "npy",
        wire_dtype: str = "float32",
        max_batch: int | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_rps: float | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if wire not in ("npy", "json"):
            raise ValueError(f"wire must be npy or json, got {wire!r}")
        if wire_dtype not in ("float32", "float16"):
            raise ValueError(f"wire_dtype must be float32 or float16, got {wire_dtype!r}")
        base = _check_url(url)
        tok = token if token is not None else (os.environ.get("ZOATTACK_TOKEN") or None)
        t, r, _ = _transport_settings(timeout, retries, backoff)
        # A server that is not there at the start is a wrong address more often than a blip.
        info = _probe(base, tok, t, min(2, r))
        limit = int(info["max_batch"])
        if max_batch is not None:
            if max_batch < 1:
                raise ValueError(f"max_batch must be >= 1, got {max_batch}")
            limit = min(limit, max_batch)
        super().__init__(
            base,
            input_shape=info["input_shape"],
            num_classes=info["num_classes"],
            output=info["output"],
            max_batch=limit,
            max_bytes=info.get("max_bytes"),
            token=tok,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_rps=max_rps,
            device=device,
            seed=seed,
            **kwargs,
        )
        self.info = info
        self.wire = wire
        self.wire_dtype = np.dtype(wire_dtype)
        _check_dataset(base, info, dataset)

    def batch_limit(self) -> int:
        step = super().batch_limit()
        if self.wire == "json" and self.max_bytes:
            # JSON spends up to ~25 bytes a float ("0.123456789012345678, ").
            per_input = 25 * int(np.prod(self.input_shape))
            step = min(step, max(1, self.max_bytes // per_input))
        return step

    def encode(self, x: np.ndarray) -> dict[str, Any]:
        x = x.astype(self.wire_dtype, copy=False)
        headers = {"Accept": NPY if self.wire == "npy" else "application/json"}
        if self.wire == "json":
            import json

            return {
                "method": "POST",
                "url": f"{self.url}/score",
                "content": json.dumps({"inputs": x.tolist()}).encode(),
                "headers": {**headers, "Content-Type": "application/json"},
            }
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        return {
            "method": "POST",
            "url": f"{self.url}/score",
            "content": buf.getvalue(),
            "headers": {**headers, "Content-Type": NPY},
        }

    def decode(self, response: Any, n: int) -> np.ndarray:
        ctype = response.headers.get("content-type", "")
        if ctype.startswith(NPY):
            try:
                return np.load(io.BytesIO(response.content), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise MalformedReply(f"unreadable .npy body: {exc}") from None
        try:
            payload = response.json()
            scores = payload["scores"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedReply(f"unreadable JSON body: {type(exc).__name__}") from None
        try:
            arr = np.asarray(scores, dtype=np.int64 if self.output == "labels" else np.float32)
        except (ValueError, TypeError):
            raise MalformedReply("scores are not a rectangular list of numbers") from None
        return arr


def _probe(url: str, token: str | None, timeout: float, attempts: int) -> dict[str, Any]:
    """``/health`` then ``/info``; one clear line for each way this can go wrong."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    last = ""
    with httpx.Client(timeout=min(timeout, 10.0), headers=headers) as http:
        for attempt in range(attempts + 1):
            if attempt:
                time.sleep(0.2 * attempt)
            try:
                health = http.get(f"{url}/health")
                break
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            raise RemoteError(
                f"cannot reach a score server at {url} ({last}); start one with "
                "`zoattack serve` or fix the address in --model remote:URL"
            )
        if health.status_code != 200:
            raise RemoteError(
                f"{url}/health answered HTTP {health.status_code} "
                f"({_detail(health)}); is this a `zoattack serve` server?"
            )
        try:
            resp = http.get(f"{url}/info")
        except httpx.HTTPError as exc:
            raise RemoteError(f"{url}/info failed ({type(exc).__name__}: {exc})") from None
    if resp.status_code == 401:
        raise RemoteError(
            f"the server at {url} rejected the token; pass the one it was "
            "started with (--token or ZOATTACK_TOKEN)"
            if token
            else f"the server at {url} needs a bearer token; pass --token or set ZOATTACK_TOKEN"
        )
    if resp.status_code != 200:
        raise RemoteError(
            f"{url}/info answered HTTP {resp.status_code}; it does not look like "
            "`zoattack serve` (for another score API use zoattack.remote.ScoreAPI)"
        )
    try:
        info = resp.json()
        shape = [int(s) for s in info["input_shape"]]
        classes = int(info["num_classes"])
        output = str(info["output"])
        int(info["max_batch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(
            f"{url}/info is not a zoattack model description ({exc!r}); is this "
            "a `zoattack serve` server?"
        ) from None
    if output not in ("logits", "probs", "labels") or classes < 2 or not shape:
        raise RemoteError(
            f"{url}/info describes an unusable model (output={output!r}, "
            f"classes={classes}, input_shape={shape})"
        )
    return info


def _expected(dataset: Any) -> tuple[str, tuple[int, ...] | None, int | None]:
    if dataset is None:
        return "", None, None
    if hasattr(dataset, "image_shape"):
        return (
            str(getattr(dataset, "name", "the data")),
            tuple(dataset.image_shape),
            int(dataset.num_classes),
        )
    from zoattack.data import dataset_spec

    spec = dataset_spec(str(dataset))
    shape = (spec.channels, *spec.size) if spec.channels and spec.size else None
    return spec.name, shape, spec.num_classes


def _check_dataset(url: str, info: Mapping[str, Any], dataset: Any) -> None:
    name, shape, classes = _expected(dataset)
    served = tuple(int(s) for s in info["input_shape"])
    if shape is not None and tuple(shape) != served:
        raise RemoteError(
            f"the model at {url} takes inputs shaped {'x'.join(map(str, served))}, but {name} "
            f"images are {'x'.join(map(str, shape))}; serve a model for {name} or pick the "
            f"data set it was built for ({info.get('dataset') or 'see its /info'})"
        )
    if classes is not None and int(info["num_classes"]) != classes:
        raise RemoteError(
            f"the model at {url} scores {info['num_classes']} classes, but {name} has "
            f"{classes}; serve a model for {name}"
        )


def remote_model(
    url: str, *, dataset: Any = None, device: str | torch.device = "cpu", **kwargs: Any
) -> RemoteModel:
    """The model served at ``url`` by `zoattack serve`, checked against ``dataset``.

    Keyword arguments (all optional): ``token``, ``timeout`` (seconds per request), ``retries``,
    ``backoff`` (first retry delay, doubled each time, jittered), ``max_rps``, ``max_batch``,
    ``wire`` (``npy``/``json``), ``wire_dtype``, ``seed`` (of the jitter). See the module notes.
    """
    return RemoteModel(url, dataset=dataset, device=device, **kwargs)


class ScoreAPI(HTTPScoreModel):
    """Adapter for a third-party score API that takes and returns JSON.

    Each request POSTs ``{**template, request_field: inputs}`` to ``url``, where ``inputs`` is
    the batch as nested lists (``(n, *input_shape)``, values in [0, 1]); the scores are read
    from the reply at ``response_field``, a dotted path (``"predictions"``,
    ``"data.scores"``, ``"outputs.0"``). Everything else (retries, micro-batching, rate limit,
    validation, the count of confirmed inputs) is shared with :class:`RemoteModel`.

    For other shapes of API, subclass and override :meth:`encode` (return httpx ``request``
    keyword arguments) and/or :meth:`decode` (return an ``(n, classes)`` array, raising
    :class:`MalformedReply` on an unreadable body). Example::

        api = ScoreAPI("https://api.example.com/v1/classify", input_shape=(3, 224, 224),
                       num_classes=1000, output="probs", response_field="probabilities",
                       headers={"X-API-Key": key}, max_batch=16, max_rps=5)
        blackbox = BlackBox(api, budget=1000)

    The API must accept an ``Idempotency-Key`` header being present; if it does not
    deduplicate on it, a retried request may be billed twice by the provider (zoattack's own
    count is still once per input).
    """

    def __init__(
        self,
        url: str,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        output: str = "probs",
        request_field: str = "inputs",
        response_field: str = "scores",
        template: Mapping[str, Any] | None = None,
        max_batch: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            url,
            input_shape=input_shape,
            num_classes=num_classes,
            output=output,
            max_batch=max_batch,
            **kwargs,
        )
        self.request_field = request_field
        self.response_field = response_field
        self.template = dict(template or {})

    def encode(self, x: np.ndarray) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": self.url,
            "json": {**self.template, self.request_field: x.tolist()},
            "headers": {},
        }

    def decode(self, response: Any, n: int) -> np.ndarray:
        try:
            node: Any = response.json()
        except ValueError:
            raise MalformedReply("the body is not JSON") from None
        for part in self.response_field.split(".") if self.response_field else []:
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise MalformedReply(f"no {self.response_field!r} in the reply") from None
        try:
            return np.asarray(node, dtype=np.int64 if self.output == "labels" else np.float32)
        except (ValueError, TypeError):
            raise MalformedReply(f"{self.response_field!r} is not a list of numbers") from None
