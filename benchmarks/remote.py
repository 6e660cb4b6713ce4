#!/usr/bin/env python
"""Remote over loopback vs in-process: the same seeded attack, scored inputs per second.

What it runs (every number comes from this run):

* in-process: ``run_job`` on the bundled small_cnn (Fashion-MNIST), the `zoattack run` path;
* remote: the same job with ``--model remote:URL``, against `zoattack serve` in a separate
  process (the real deployment) over the binary (.npy) body and over JSON, and against a server
  in a thread of this process; plus unbatched requests (``max_batch=1``) for contrast;
* whether the remote rows equal the in-process rows (they must: float32 on the wire);
* a breakdown of one request at the attack's mean request size: model forward, .npy
  encoding/decoding (both directions), an HTTP round trip that scores nothing (``/health``),
  and the whole ``/score`` request; what is left is the web framework (FastAPI routing,
  the hop to a worker thread, the client's own bookkeeping).

Run: ``nice python benchmarks/remote.py`` (about 2 minutes on 2 shared cores), ``--quick`` for a
smaller attack, ``--json FILE`` to keep the figures. torch runs single-threaded (``--threads``)
in this process and in the server: the batches are small and two OpenMP threads on a loaded
2-core machine made runs 10-20x slower.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from _common import metadata, set_threads, timed, write_json

from zoattack.jobs.attack import AttackSpec, prepare, run_job
from zoattack.remote.client import remote_model
from zoattack.remote.server import BackgroundServer, bind_socket, model_server_app


def attack(spec: AttackSpec, model: torch.nn.Module | None = None) -> tuple[float, int, list]:
    job = prepare(spec, model=model)
    t0 = time.perf_counter()
    out = run_job(job)
    return time.perf_counter() - t0, out.scored_inputs, out.rows


def start_subprocess_server(threads: int) -> tuple[subprocess.Popen, str]:
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zoattack",
            "serve",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--log-level",
            "error",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("zoattack serve exited during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("zoattack serve did not start within 120 s")


def breakdown(url: str, victim: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds per request of ``len(x)`` inputs, by where the time goes."""
    arr = x.numpy()

    def forward() -> None:
        with torch.inference_mode():
            victim(x)

    with torch.inference_mode():
        scores = victim(x).numpy()

    def codec() -> None:  # what client and server do to the bodies, both ways
        for a in (arr, scores):
            buf = io.BytesIO()
            np.save(buf, a)
            np.load(io.BytesIO(buf.getvalue()))

    model = remote_model(url)
    with httpx.Client() as http:
        ms = {
            "model forward": timed(forward, repeats),
            ".npy encode+decode": timed(codec, repeats),
            "HTTP round trip (/health)": timed(lambda: http.get(f"{url}/health"), repeats),
            "whole /score request": timed(lambda: model(x), repeats),
        }
    model.close()
    ms = {k: v * 1000 for k, v in ms.items()}
    parts = ms["model forward"] + ms[".npy encode+decode"] + ms["HTTP round trip (/health)"]
    ms["rest (framework, thread hop)"] = max(0.0, ms["whole /score request"] - parts)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting (best is kept)")
    ap.add_argument("--quick", action="store_true", help="40 images, budget 200")
    ap.add_argument("--json", dest="json_out", help="write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.images, args.budget = 40, 200
    set_threads(args.threads)
    spec = AttackSpec(images=args.images, budget=args.budget, device="cpu", seed=0)
    small = AttackSpec(
        images=min(10, args.images), budget=min(100, args.budget), device="cpu", seed=0
    )

    results: list[tuple[str, float, int, int | None]] = []  # name, seconds, inputs, requests

    def best(name: str, make_model: Any = None) -> list:
        runs = []
        for _ in range(args.repeats):
            model = make_model() if make_model else None
            secs, n, rows = attack(spec if "max_batch=1" not in name else small, model)
            runs.append((secs, n, rows, getattr(model, "requests", None)))
        secs, n, rows, reqs = min(runs, key=lambda r: r[0])
        results.append((name, secs, n, reqs))
        print(f"  {name}: {n / secs:,.0f} inputs/s", file=sys.stderr)
        return rows

    print(
        f"attack: sign (Linf 0.1), small_cnn on fashion-mnist, {spec.images} images, "
        f"budget {spec.budget}, torch threads {args.threads}",
        file=sys.stderr,
    )
    local_rows = best("in-process")
    proc, url = start_subprocess_server(args.threads)
    try:
        remote_rows = best("remote, server process, .npy", lambda: remote_model(url))
        best("remote, server process, JSON", lambda: remote_model(url, wire="json"))
        best(
            "remote, server process, max_batch=1 (10 images, budget 100)",
            lambda: remote_model(url, max_batch=1),
        )
        reqs = next(r for r in results if r[0] == "remote, server process, .npy")
        mean_batch = max(1, round(reqs[2] / max(1, reqs[3] or 1)))
        x = prepare(spec).images[:1].repeat(mean_batch, 1, 1, 1)
        victim = prepare(spec).model
        parts = breakdown(url, victim, x, repeats=30)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with BackgroundServer(model_server_app()) as server:
        best("remote, server thread (same process), .npy", lambda: remote_model(server.url))

    base = results[0][2] / results[0][1]
    print(f"\n{'setting':<62} {'inputs/s':>10} {'ratio':>7} {'inputs/request':>15}")
    for name, secs, n, reqs in results:
        per_req = f"{n / reqs:,.1f}" if reqs else "-"
        print(f"{name:<62} {n / secs:>10,.0f} {n / secs / base:>7.2f} {per_req:>15}")
    same = remote_rows == local_rows
    print(f"\nremote rows identical to in-process rows: {'yes' if same else 'NO'}")
    print(f"\none request of {mean_batch} inputs (the attack's mean), milliseconds:")
    total = parts["whole /score request"]
    for k, v in parts.items():
        share = "" if k == "whole /score request" else f"  ({v / total:.0%})"
        print(f"  {k:<32} {v:8.3f}{share}")
    if args.json_out:
        write_json(
            Path(args.json_out),
            {
                "meta": metadata(),
                "settings": vars(args),
                "identical_rows": same,
                "breakdown_ms": parts,
                "mean_batch": mean_batch,
                "rates": {
                    name: {
                        "seconds": secs,
                        "scored_inputs": n,
                        "requests": reqs,
                        "inputs_per_second": n / secs,
                        "ratio": n / secs / base,
                    }
                    for name, secs, n, reqs in results
                },
            },
        )
    if not same:
        raise SystemExit("remote rows differ from in-process rows")


if __name__ == "__main__":
    main()
