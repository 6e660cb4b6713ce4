"""Fault injection for score servers: a deterministic schedule of 503s, 500s, timeouts, slow
replies, malformed bodies and dropped connections, for testing clients against a flaky API.

Wrap any ASGI app (e.g. :func:`zoattack.remote.server.create_app`'s)::

    app = FaultInjector(create_app(model, ...), FaultPlan(schedule=[None, "503", None, "drop"]))

Only ``POST /score`` requests are faulted. Request ``n`` (0-based, in arrival order) gets
``schedule[n % len(schedule)]``; from request ``down_after`` on, every request gets a 503, as if
the service went down for good. Faults that reach the model (timeout, slow, malformed, drop)
let the server score the batch first, which is exactly what makes retries dangerous for counts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("503", "500", "timeout", "slow", "malformed", "drop")


@dataclass
class FaultPlan:
    """``schedule``: one entry per request (None: healthy), cycled. ``timeout_s`` should exceed
    the client's timeout; ``slow_s`` stay below it."""

    schedule: Sequence[str | None] = (None,)
    down_after: int | None = None
    timeout_s: float = 1.0
    slow_s: float = 0.05

    def __post_init__(self) -> None:
        bad = [f for f in self.schedule if f is not None and f not in FAULTS]
        if bad or not self.schedule:
            raise ValueError(f"faults must be None or one of {', '.join(FAULTS)}, got {bad}")

    def fault_for(self, n: int) -> str | None:
        if self.down_after is not None and n >= self.down_after:
            return "503"
        return self.schedule[n % len(self.schedule)]


@dataclass
class FaultLog:
    injected: list[tuple[int, str]] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def counts(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for _, f in self.injected:
                out[f] = out.get(f, 0) + 1
            return out


class FaultInjector:
    """ASGI middleware applying a :class:`FaultPlan` to ``POST /score``; ``log`` records it."""

    def __init__(self, app: Any, plan: FaultPlan) -> None:
        self.app = app
        self.plan = plan
        self.log = FaultLog()

    @property
    def state(self) -> Any:  # so app.state.stats keeps working through the wrapper
        return self.app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/score" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        with self.log.lock:
            n = self.log.requests
            self.log.requests += 1
            fault = self.plan.fault_for(n)
            if fault is not None:
                self.log.injected.append((n, fault))
        if fault is None:
            await self.app(scope, receive, send)
            return
        # Read the whole body now, so the app can still score it after the client is gone.
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        if fault in ("503", "500"):
            await _send(
                send,
                int(fault),
                b'{"detail": "injected fault"}',
                [(b"content-type", b"application/json")],
            )
            return
        if fault in ("timeout", "slow"):
            await asyncio.sleep(self.plan.timeout_s if fault == "timeout" else self.plan.slow_s)
            try:
                await self.app(scope, replay, send)
            except Exception:  # the client gave up on a timed-out reply: nobody to send to
                pass
            return
        status, headers, reply = await _capture(self.app, scope, replay)
        if fault == "malformed":
            bad = (
                b'{"output": "logits", "scores": [[0.1, 0.2'
                if reply[:1] == b"{"
                else b"\x93NUMPY garbage"
            )
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(bad)).encode()))
            await _send(send, status, bad, headers)
            return
        # "drop": promise the full body, send half of it, then abort the connection.
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": reply[: len(reply) // 2], "more_body": True}
        )
        raise ConnectionAbortedError("injected dropped connection")


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    if not any(k.lower() == b"content-length" for k, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _capture(
    app: Any, scope: dict[str, Any], receive: Any
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run ``app`` and collect its whole response instead of sending it."""
    status, headers, chunks = 500, [], []

    async def collect(msg: dict[str, Any]) -> None:
        nonlocal status, headers
        if msg["type"] == "http.response.start":
            status, headers = msg["status"], list(msg.get("headers", []))
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(scope, receive, collect)
    return status, headers, b"".join(chunks)


def describe(log: FaultLog) -> str:
    return json.dumps(log.counts(), sort_keys=True)
