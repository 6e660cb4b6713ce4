#!/usr/bin/env python
"""Load test for `zoattack serve` over loopback: concurrent clients for a fixed time, with and
without injected faults, and with maximum-size bodies; bounded in time and count, stops itself.

Phases (each against a fresh server process on 127.0.0.1, port chosen by the OS):

* ``clean``: ``--clients`` threads, each with one keep-alive connection, POST ``.npy`` batches
  of ``--batch`` images (what `zoattack run --model remote:URL` sends) with an Idempotency-Key
  for ``--seconds``. Every reply is checked (status, shape, ``X-Scored-Inputs``).
* ``faults``: the same load against the same server with zoattack.remote.faults injecting 503,
  500, malformed bodies, dropped connections, slow and timed-out replies (6 of every 100
  requests). Clients retry like the real client (same Idempotency-Key, exponential backoff
  with jitter); afterwards the server's ``/stats`` must count exactly the inputs the clients
  had confirmed (a retried request is replayed, never scored twice).
* ``max``: bodies at the server's ``--max-bytes`` cap: per four requests one valid ``.npy`` of
  as many images as fit (scored), two that fill the cap but decode to the wrong image shape
  (read and decoded whole, then 422) and one twice the cap (413). The server's peak RSS
  against its idle RSS shows whether memory stays bounded.
* ``mem`` (only when asked for): ``--mem-clients`` bodies of ``--mem-mb`` MB each sent at once
  (``--max-inflight`` = that count, the cap just above the body), one fresh server per body
  kind: ``json-lists`` (``{"inputs": [[], [], ...]}``), ``json-floats`` (json.dumps of floats),
  ``json-short`` (every number ``1.5``), ``npy`` (float32) -- read and decoded whole, then
  refused for their range (422) -- and
  ``npy-scored`` (a batch of 4096 images, scored). The server's peak RSS over its idle RSS,
  and that growth over the bytes in flight. ``--server-code DIR`` runs another checkout's
  server (give it twice to compare): issue 24's figures are
  ``python benchmarks/serve_load.py --phases mem --server-code /work/main --server-code .``

Memory: the server runs as a subprocess (`python -m zoattack serve`; for ``faults`` the same
command with the fault middleware patched in by this script) and its ``/proc/PID/status`` is
read: ``VmHWM`` (peak RSS) is reset after warm-up through ``/proc/PID/clear_refs``, so the
peak is the phase's own; ``VmRSS`` is also sampled every 20 ms in case the reset is refused.

Run: ``python benchmarks/serve_load.py`` (32 clients x 60 s per phase, ~4 minutes), or
``--clients 8 --seconds 3`` for a smoke run; ``--json FILE`` keeps the figures. Client threads
and the server share the machine's cores, so the figures are for both together.

The code is in three files: this one (clients, phases, options), ``_serve_server.py`` (the
server process, its memory, the bodies) and ``_serve_mem.py`` (the ``mem`` phase).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import random
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _serve_mem import MEM_KINDS, mem_body, mem_table, run_mem_kind, send_once  # noqa: F401
from _serve_server import (  # noqa: F401  (re-exported: the names serve_load always had)
    CLASSES,
    CLIENT_TIMEOUT_S,
    FAULT_SCHEDULE,
    FAULT_TIMEOUT_S,
    NPY,
    RETRIES,
    ROOT,
    SHAPE,
    Memory,
    MiB,
    Server,
    get_json,
    max_images,
    npy_body,
    npy_body_header,
    start_server,
    stop_server,
)


def serve_with_faults(serve_args: list[str]) -> None:
    """`zoattack serve` with FaultInjector wrapped around its app (the CLI has no fault switch);
    prints the injected faults as one JSON line when the server stops."""
    from zoattack.cli.main import app
    from zoattack.remote import server
    from zoattack.remote.faults import FaultInjector, FaultPlan, describe

    plan = FaultPlan(schedule=FAULT_SCHEDULE, timeout_s=FAULT_TIMEOUT_S, slow_s=0.05)
    build = server.model_server_app
    injectors: list[FaultInjector] = []

    def faulty(*args: Any, **kwargs: Any) -> FaultInjector:
        injectors.append(FaultInjector(build(*args, **kwargs), plan))
        return injectors[-1]

    server.model_server_app = faulty  # serve_command imports it at call time
    try:
        app(args=serve_args, standalone_mode=False)
    finally:
        for inj in injectors:
            print(f"injected faults: {describe(inj.log)}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- clients
@dataclass
class Tally:
    """One client's (then all clients') counts; latencies of answered logical requests."""

    sent: int = 0  # logical requests started
    answered: int = 0  # ... that got a valid reply (after retries)
    refused: int = 0  # bodies meant to be refused that got a 4xx (or 413 and a closed upload)
    failed: int = 0  # ... that ran out of retries or got an unexpected reply
    attempts: int = 0
    retries: int = 0
    confirmed_inputs: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # per attempt: 5xx, 4xx, timeout, ...

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: Tally) -> None:
        for name in ("sent", "answered", "refused", "failed", "attempts", "retries"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.confirmed_inputs += other.confirmed_inputs
        self.latencies += other.latencies
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v


class Client(threading.Thread):
    def __init__(
        self,
        cid: int,
        port: int,
        deadline: float,
        bodies: list[tuple[bytes, int]],
        timeout: float,
        retry: bool,
    ) -> None:
        super().__init__(daemon=True, name=f"load-client-{cid}")
        self.cid, self.port, self.deadline = cid, port, deadline
        self.bodies, self.timeout, self.retry = bodies, timeout, retry
        self.tally = Tally()
        self.rng = random.Random(cid)  # backoff jitter only
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run(self) -> None:
        i = max(self.cid, 0)  # clients start at different bodies: every mix shows up early
        try:
            while time.monotonic() < self.deadline:
                body, n = self.bodies[i % len(self.bodies)]
                i += 1
                self.request(body, n)
        finally:
            self._drop()

    def attempt(self, body: bytes, key: str) -> tuple[int, dict[str, str], bytes]:
        conn = self._connection()
        headers = {"Content-Type": NPY, "Accept": NPY, "Idempotency-Key": key}
        conn.request("POST", "/score", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.getheader("connection", "").lower() == "close":
            self._drop()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def request(self, body: bytes, n: int) -> None:
        """One logical request: attempts (with retries when faults are expected) until a valid
        reply, the refusal of a body meant to be refused (``n == -1`` over the cap: 413;
        ``n == -2`` at the cap but misshapen: 422), or the retries run out."""
        t = self.tally
        t.sent += 1
        key = uuid.uuid4().hex  # one per logical request: retries are replayed, not re-scored
        t0 = time.monotonic()
        for attempt in range(RETRIES + 1 if self.retry else 1):
            if attempt:
                t.retries += 1
                time.sleep(min(1.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + self.rng.random()))
            t.attempts += 1
            try:
                status, headers, data = self.attempt(body, key)
            except TimeoutError:
                t.error("timeout")
                self._drop()
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if n == -1:  # oversize: the server may answer 413 and close mid-upload
                    t.refused += 1
                    return
                t.error(f"connection ({type(exc).__name__})")
                continue
            if n < 0:
                if status == {-1: 413, -2: 422}[n]:
                    t.refused += 1
                else:
                    t.error(f"{'oversize' if n == -1 else 'misshapen'} body got {status}")
                    t.failed += 1
                return
            if status >= 500:
                t.error(f"http {status}")
                continue
            if status != 200:
                t.error(f"http {status}")
                t.failed += 1
                return
            try:
                scores = np.load(io.BytesIO(data), allow_pickle=False)
                ok = scores.shape == (n, CLASSES) and headers.get("x-scored-inputs") == str(n)
            except (ValueError, OSError, EOFError):
                ok = False
            if not ok:
                t.error("malformed reply")
                self._drop()
                continue
            t.answered += 1
            t.confirmed_inputs += n
            t.latencies.append(time.monotonic() - t0)
            return
        t.failed += 1


# ----------------------------------------------------------------------------- phases
def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_phase(
    name: str, *, clients: int, seconds: float, batch: int, max_bytes: int, threads: int
) -> dict[str, Any]:
    faults = name == "faults"
    if name == "max":
        # Per 4 requests: one valid body at the cap (scored), two at the cap that decode to
        # the wrong image shape (buffered and decoded whole, then 422: the memory load without
        # a forward of thousands of images each), one twice the cap (413 from its length).
        n_max = max_images(max_bytes)
        wrong = max_images(max_bytes, (1, 28, 29))
        bodies = [
            (npy_body(n_max, 0), n_max),
            (npy_body(wrong, 1, (1, 28, 29)), -2),
            (b"\x00" * (2 * max_bytes), -1),
            (npy_body(wrong, 2, (1, 28, 29)), -2),
        ]
    else:
        bodies = [(npy_body(batch, s), batch) for s in range(16)]
    server = start_server(max_bytes=max_bytes, faults=faults, threads=threads)
    try:
        mem = Memory(server.pid)
        # Warm up (first forward, thread pool, allocator), then the idle baseline.
        # One request only: the fault schedule starts healthy, and the tally below must see
        # every injected fault.
        warm = Client(-1, server.port, 0.0, bodies[:1], 60.0, retry=False)
        warm.request(*bodies[0])
        warm._drop()
        assert warm.tally.answered == 1, f"warm-up failed: {warm.tally}"
        time.sleep(0.2)
        baseline = mem.read()["VmRSS"]
        mem.reset_peak()
        stats0 = get_json(server, "/stats")
        deadline = time.monotonic() + seconds
        workers = [
            Client(c, server.port, deadline, bodies, CLIENT_TIMEOUT_S[name], retry=faults)
            for c in range(clients)
        ]
        with mem:
            t0 = time.monotonic()
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=seconds + 300)
            wall = time.monotonic() - t0
            hung = sum(w.is_alive() for w in workers)
            peak = mem.peak()
        if faults:
            time.sleep(FAULT_TIMEOUT_S + 0.5)  # held "timeout" replies finish (and replay)
        stats = get_json(server, "/stats")
    finally:
        log = stop_server(server)
    total = Tally()
    for w in workers:
        total.merge(w.tally)
    m = re.search(r"injected faults: (\{.*\})", log)
    scored = stats["scored_inputs"] - stats0["scored_inputs"]
    lat_ms = [1000 * v for v in total.latencies]
    return {
        "phase": name,
        "clients": clients,
        "seconds": round(wall, 1),
        "body_bytes": max(len(b) for b, n in bodies if n > 0),
        "oversize_bytes": max([len(b) for b, n in bodies if n < 0], default=0),
        "requests": total.sent,
        "answered": total.answered,
        "refused_4xx": total.refused,
        "failed": total.failed,
        "hung_clients": hung,
        "attempts": total.attempts,
        "retries": total.retries,
        "errors": dict(sorted(total.errors.items())),
        "requests_per_s": round(total.answered / wall, 1),
        "inputs_per_s": round(total.confirmed_inputs / wall, 1),
        "p50_ms": round(percentile(lat_ms, 50) or 0, 1),
        "p99_ms": round(percentile(lat_ms, 99) or 0, 1),
        "server_scored_inputs": scored,
        "client_confirmed_inputs": total.confirmed_inputs,
        "server_5xx_in_log": len(re.findall(r"Exception in ASGI application", log)),
        "injected": json.loads(m.group(1)) if m else {},
        "rss_baseline_mib": round(baseline, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_peak_exact": mem.reset_ok,
        "max_bytes": max_bytes,
    }


def table(results: list[dict[str, Any]]) -> str:
    cols = [
        ("phase", "phase"),
        ("clients", "clients"),
        ("s", "seconds"),
        ("body KiB", "body_bytes"),
        ("requests", "requests"),
        ("answered", "answered"),
        ("refused", "refused_4xx"),
        ("failed", "failed"),
        ("retries", "retries"),
        ("req/s", "requests_per_s"),
        ("inputs/s", "inputs_per_s"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("RSS idle MiB", "rss_baseline_mib"),
        ("RSS peak MiB", "rss_peak_mib"),
    ]
    rows = [[h for h, _ in cols]]
    for r in results:
        rows.append(
            [
                str(r[k] // 1024)
                if k == "body_bytes"
                else f"{r[k]:,}"
                if isinstance(r[k], int)
                else str(r[k])
                for _, k in cols
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in results:
        lines.append(
            f"{r['phase']}: errors per attempt {r['errors'] or 'none'}; injected "
            f"{r['injected'] or 'none'}; server scored {r['server_scored_inputs']:,} inputs, "
            f"clients confirmed {r['client_confirmed_inputs']:,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0, help="per phase")
    p.add_argument("--batch", type=int, default=25, help="images per request (clean, faults)")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=8 * MiB,
        help="the server's body cap (the max phase sends bodies of this size)",
    )
    p.add_argument(
        "--phases", default="clean,faults,max", help="any of clean, faults, max, mem (memory)"
    )
    p.add_argument("--mem-clients", type=int, default=4, help="bodies in flight at once (mem)")
    p.add_argument("--mem-mb", type=float, default=50.0, help="size of each body in MB (mem)")
    p.add_argument("--mem-kinds", default=",".join(MEM_KINDS), help="body kinds (mem)")
    p.add_argument(
        "--server-code",
        type=Path,
        default=[],
        action="append",
        help="checkout(s) whose zoattack the mem phase's servers run (default: this one); "
        "give it twice (e.g. /path/to/main and .) to compare before and after in one run",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    bad = [s for s in phases if s not in CLIENT_TIMEOUT_S]
    if bad or not phases:
        p.error(f"--phases takes clean, faults and/or max, got {args.phases!r}")
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        p.error("--clients must be in [1, 256] and --seconds in (0, 600]")
    kinds = [k.strip() for k in args.mem_kinds.split(",") if k.strip()]
    if "mem" in phases and (
        not kinds or set(kinds) - set(MEM_KINDS) or not 1 <= args.mem_clients <= 16
    ):
        p.error(f"--mem-kinds takes {', '.join(MEM_KINDS)}; --mem-clients is 1 to 16")
    results = []
    for name in phases:
        if name == "mem":
            size = int(args.mem_mb * 1e6)
            cap = max(args.max_bytes, size + 4096)
            mem_results = []
            for code in args.server_code or [ROOT]:
                for kind in kinds:
                    print(
                        f"mem: {args.mem_clients} x {kind} of {args.mem_mb:g} MB at once, "
                        f"server from {code} ...",
                        file=sys.stderr,
                    )
                    mem_results.append(
                        run_mem_kind(
                            kind,
                            clients=args.mem_clients,
                            size=size,
                            max_bytes=cap,
                            threads=args.threads,
                            code=code.resolve(),
                        )
                    )
            print(mem_table(mem_results))
            results += mem_results
            continue
        print(f"{name}: {args.clients} clients x {args.seconds:g} s ...", file=sys.stderr)
        results.append(
            run_phase(
                name,
                clients=args.clients,
                seconds=args.seconds,
                batch=args.batch,
                max_bytes=args.max_bytes,
                threads=args.threads,
            )
        )
    load = [r for r in results if r["phase"] != "mem"]
    if load:
        print(table(load))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-with-faults":
        serve_with_faults(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    else:
        main()
