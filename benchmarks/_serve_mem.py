"""The ``mem`` phase of ``benchmarks/serve_load.py`` (issue 24): bodies of each kind sent at once
to a fresh server, its peak RSS over idle."""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _serve_server import (
    CLIENT_TIMEOUT_S,
    NPY,
    SHAPE,
    Memory,
    MiB,
    npy_body,
    start_server,
    stop_server,
)

MEM_KINDS = ("json-lists", "json-floats", "json-short", "npy", "npy-scored")


def mem_body(kind: str, size: int, max_batch: int) -> tuple[bytes, int, int]:
    """(body, images, expected status) of about ``size`` bytes for one memory-phase kind.

    ``json-lists``: ``{"inputs": [[], [], ...]}``, no number at all (refused: not a batch).
    ``json-floats``: ``{"inputs": nested lists}`` of random floats in [1, 2) as json.dumps
    writes them (~20 bytes a number); ``json-short``: the same with every number ``1.5`` (5
    bytes a number: the most numbers, hence the largest array, per byte of body); ``npy``: a
    float32 ``.npy`` of random values in [1, 2). These are read and
    decoded whole, then refused for their range (422): the body-handling memory without a
    forward. ``npy-scored``: ``max_batch`` float32 images in [0, 1] (``size`` ignored), scored:
    what a forward of the largest batch adds.
    """
    rng = np.random.default_rng(0)
    per = int(np.prod(SHAPE))
    if kind == "json-lists":
        k = (size - len(b'{"inputs": [[]]}')) // 3
        return b'{"inputs": [' + b"[]," * k + b"[]]}", 0, 422
    if kind == "json-floats":
        one = json.dumps((1 + rng.random(SHAPE)).tolist()).encode()
        n = min(max_batch, max(1, size // (len(one) + 2)))
        images = [json.dumps((1 + rng.random(SHAPE)).tolist()).encode() for _ in range(n)]
        return b'{"inputs": [' + b", ".join(images) + b"]}", n, 422
    if kind == "json-short":
        one = b"[[" + b", ".join([b"[" + b", ".join([b"1.5"] * SHAPE[2]) + b"]"] * SHAPE[1]) + b"]]"
        n = max(1, size // (len(one) + 2))
        return b'{"inputs": [' + b", ".join([one] * n) + b"]}", n, 422
    if kind == "npy":
        n = max(1, (size - 128) // (4 * per))
        x = (1 + rng.random((n, *SHAPE), dtype=np.float32)).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        return buf.getvalue(), n, 422
    if kind == "npy-scored":
        return npy_body(max_batch, 0), max_batch, 200
    raise ValueError(f"unknown memory kind {kind!r}; pick from {', '.join(MEM_KINDS)}")


def send_once(port: int, body: bytes, ctype: str, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/score", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException) as exc:
        return -len(type(exc).__name__)  # any negative: the request failed in transport
    finally:
        conn.close()


def run_mem_kind(
    kind: str, *, clients: int, size: int, max_bytes: int, threads: int, code: Path
) -> dict[str, Any]:
    """``clients`` bodies of one kind sent at once to a fresh server; its peak RSS over idle."""
    max_batch = 4096  # `zoattack serve`'s default
    # The npy and json-short kinds at 50 MB hold ~13k-16k images: the batch cap is raised so
    # they are decoded, not refused from their header or brackets (then refused for their
    # range; nothing is scored).
    body, n, want = mem_body(kind, size, max_batch)
    n_needed = max(max_batch, n)
    ctype = NPY if kind.startswith("npy") else "application/json"
    max_bytes = max(max_bytes, len(body))
    extra = ("--max-inflight", str(clients), "--max-batch", str(n_needed))
    server = start_server(
        max_bytes=max_bytes, faults=False, threads=threads, extra=extra, code=code
    )
    try:
        mem = Memory(server.pid)
        warm = send_once(server.port, npy_body(4, 0), NPY, 60.0)
        assert warm == 200, f"warm-up got {warm}"
        time.sleep(0.3)
        baseline = mem.read()["VmRSS"]
        mem.reset_peak()
        statuses: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            status = send_once(server.port, body, ctype, CLIENT_TIMEOUT_S["mem"])
            with lock:
                statuses.append(status)

        workers = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
        with mem:
            t0 = time.monotonic()
            for w in workers:
                w.start()
            for w in workers:
                w.join(CLIENT_TIMEOUT_S["mem"] + 10)
            wall = time.monotonic() - t0
            time.sleep(0.1)
            peak = mem.peak()
    finally:
        log = stop_server(server)
    return {
        "phase": "mem",
        "kind": kind,
        "code": str(code),
        "clients": clients,
        "body_bytes": len(body),
        "images": n,
        "statuses": sorted(statuses),
        "as_expected": statuses == [want] * clients,
        "seconds": round(wall, 1),
        "rss_baseline_mib": round(baseline, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_growth_mib": round(peak - baseline, 1),
        "growth_per_body": round((peak - baseline) * MiB / (clients * len(body)), 2),
        "rss_peak_exact": mem.reset_ok,
        "max_bytes": max_bytes,
        "server_5xx_in_log": len(re.findall(r"Exception in ASGI application", log)),
    }


def mem_table(results: list[dict[str, Any]]) -> str:
    cols = ["kind", "code", "clients", "body MB", "statuses", "s", "idle MiB", "peak MiB"]
    cols += ["growth MiB", "growth / bodies"]
    rows = [cols]
    for r in results:
        rows.append(
            [
                r["kind"],
                r["code"],
                str(r["clients"]),
                f"{r['body_bytes'] / 1e6:.1f}",
                ",".join(str(s) for s in sorted(set(r["statuses"]))),
                str(r["seconds"]),
                str(r["rss_baseline_mib"]),
                str(r["rss_peak_mib"]),
                str(r["rss_growth_mib"]),
                f"{r['growth_per_body']}x",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
