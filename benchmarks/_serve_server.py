"""The server side of ``benchmarks/serve_load.py``: its constants, the `zoattack serve`
subprocess, its memory read from /proc, and the ``.npy`` request bodies."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)  # the bundled small_cnn on Fashion-MNIST
CLASSES = 10
NPY = "application/x-npy"
MiB = 2**20
# 6 faults in every 100 requests, spread out; "timeout" sleeps past the client's timeout.
FAULT_SCHEDULE: list[str | None] = [None] * 100
for _at, _kind in zip(
    (7, 23, 39, 55, 71, 87), ("503", "500", "malformed", "drop", "slow", "timeout")
):
    FAULT_SCHEDULE[_at] = _kind
FAULT_TIMEOUT_S = 4.0  # how long an injected timeout holds the reply
CLIENT_TIMEOUT_S = {"clean": 60.0, "faults": 2.0, "max": 300.0, "mem": 600.0}
RETRIES = 8


# ----------------------------------------------------------------------------- server
@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_server(
    *,
    max_bytes: int,
    faults: bool,
    threads: int,
    timeout: float = 120.0,
    extra: tuple[str, ...] = (),
    code: Path = ROOT,
) -> Server:
    """`zoattack serve --port 0` in its own process; returns once /health answers. ``code``:
    the checkout whose zoattack the server runs (another one to measure its figures)."""
    serve = ["serve", "--port", "0", "--device", "cpu", "--max-bytes", str(max_bytes), *extra]
    if faults:
        # The script itself: its __main__ runs serve_with_faults.
        script = Path(__file__).resolve().with_name("serve_load.py")
        cmd = [sys.executable, str(script), "--serve-with-faults", "--", *serve]
    else:
        cmd = [sys.executable, "-m", "zoattack", *serve]
    # The server runs this checkout's zoattack, whatever is installed.
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = Path(tempfile.mkstemp(prefix="zoattack-serve-", suffix=".log")[1])
    with log.open("wb") as fh:
        # cwd too: `python -m` puts the working directory first on sys.path.
        proc = subprocess.Popen(
            cmd, env=env, cwd=code, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh
        )
    t0 = time.monotonic()
    port = None
    while port is None:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m:
            port = int(m.group(1))
        elif proc.poll() is not None or time.monotonic() - t0 > timeout:
            stop_server(Server(proc, 0, log))
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")
        else:
            time.sleep(0.05)
    server = Server(proc, port, log)
    while True:  # the line is printed just before uvicorn starts accepting
        try:
            if get_json(server, "/health").get("status") == "ok":
                return server
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            stop_server(server)
            raise RuntimeError(f"the server did not answer:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


def stop_server(server: Server) -> str:
    """SIGINT (uvicorn's graceful stop), SIGKILL after 15 s; returns the server's log."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    text = server.log.read_text(errors="replace")
    server.log.unlink(missing_ok=True)
    return text


def get_json(server: Server, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# ----------------------------------------------------------------------------- memory
class Memory:
    """Peak and current RSS of a process from /proc (kB -> MiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_peak = 0.0
        self.reset_ok = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def read(self) -> dict[str, float]:
        vals: dict[str, float] = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    vals[key] = int(rest.split()[0]) / 1024
        return vals

    def reset_peak(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.sampled_peak = self.read()["VmRSS"]

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sampled_peak = max(self.sampled_peak, self.read()["VmRSS"])
            except (OSError, KeyError):
                return

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self) -> float:
        now = self.read()
        return max(now["VmHWM"], self.sampled_peak) if self.reset_ok else self.sampled_peak


# ----------------------------------------------------------------------------- bodies
def npy_body(n: int, seed: int, shape: tuple[int, ...] = SHAPE) -> bytes:
    x = np.random.default_rng(seed).random((n, *shape), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def max_images(max_bytes: int, shape: tuple[int, ...] = SHAPE) -> int:
    """Most float32 images whose .npy fits in ``max_bytes`` (header: 128 bytes here)."""
    per = 4 * int(np.prod(shape))
    n = (max_bytes - 128) // per
    while n > 0 and len(npy_body_header(n, shape)) + n * per > max_bytes:
        n -= 1
    return n


def npy_body_header(n: int, shape: tuple[int, ...] = SHAPE) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (n, *shape)}
    )
    return buf.getvalue()
