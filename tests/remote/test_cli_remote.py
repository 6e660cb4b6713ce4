"""End to end through the CLI: `zoattack run --model remote:URL` equals the in-process run;
a server that goes down mid-run → exit 3 with the finished rows written; `--resume` against a
healthy server on the same address completes with the uninterrupted run's rows; `zoattack
serve` itself, in a subprocess."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.remote.client import remote_model
from zoattack.remote.faults import FaultInjector, FaultPlan
from zoattack.remote.server import bind_socket

runner = CliRunner()
ARGS = (
    "run",
    "--dataset",
    "fashion-mnist",
    "--images",
    "12",
    "--budget",
    "60",
    "--chunk-size",
    "4",
    "--device",
    "cpu",
    "--seed",
    "1",
)


def run(*args: str):
    return runner.invoke(app, [*ARGS, *args])


@pytest.fixture(scope="module")
def in_process_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    res = run("--out", str(out))
    assert res.exit_code == 0, res.output
    return (out / "per_image.csv").read_text()


@pytest.fixture()
def fast_client(monkeypatch):
    """`zoattack run` has no client options: the environment sets them."""
    monkeypatch.setenv("ZOATTACK_REMOTE_RETRIES", "2")
    monkeypatch.setenv("ZOATTACK_REMOTE_BACKOFF", "0.01")
    monkeypatch.setenv("ZOATTACK_REMOTE_TIMEOUT", "2")


def test_remote_run_writes_the_in_process_rows(healthy, fast_client, tmp_path, in_process_csv):
    res = run("--model", f"remote:{healthy.url}", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "per_image.csv").read_text() == in_process_csv
    stats = healthy.server.config.app.state.stats.as_dict()
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert stats["scored_inputs"] == sum(int(r["queries"]) for r in rows)


def test_server_down_mid_run_then_resume(
    victim, app_for, serve, fast_client, tmp_path, in_process_csv
):
    flaky = FaultInjector(
        app_for(victim), FaultPlan([None, "503", None, "drop", None, "malformed"], down_after=150)
    )
    out = str(tmp_path / "run")
    with serve(flaky) as server:
        port, model = server.port, f"remote:{server.url}"
        res = run("--model", model, "--out", out)
    assert res.exit_code == 3, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    assert "stopped at images" in lines[0] and "rerun with --resume" in lines[0]
    assert "HTTP 503" in lines[0]
    want = list(csv.DictReader(in_process_csv.splitlines()))
    with open(f"{out}/per_image.csv") as fh:
        partial = list(csv.DictReader(fh))
    assert 4 <= len(partial) < 12  # chunk 0 at least, never everything
    assert all(r == want[int(r["index"])] for r in partial)

    with serve(app_for(victim), port=port) as server:  # back, on the same address
        res = run("--model", model, "--out", out, "--resume", "--json")
        assert res.exit_code == 0, res.output
        stats = server.server.config.app.state.stats.as_dict()
    with open(f"{out}/per_image.csv") as fh:
        assert fh.read() == in_process_csv  # nothing lost or doubled
    done = {r["index"] for r in partial}
    redone_chunks = {int(r["index"]) // 4 for r in want if r["index"] not in done}
    # The resumed run re-attacked only chunks with unfinished images.
    assert stats["scored_inputs"] == sum(
        int(r["queries"]) for r in want if int(r["index"]) // 4 in redone_chunks
    )


def test_run_against_nothing_is_one_line_exit_2(fast_client):
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    res = run("--model", f"remote:http://127.0.0.1:{port}")
    assert res.exit_code == 2
    assert "cannot reach a score server" in res.stderr and "Traceback" not in res.output
    res = run("--model", "remote:ftp://x")
    assert res.exit_code == 2 and "bad remote URL" in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--output", "softmax"), "--output must be logits, probs or labels"),
        (("--port", "70000"), "--port must be"),
        (("--max-batch", "0"), "--max-batch must be >= 1"),
        (("--body-timeout", "0"), "--body-timeout must be a positive number"),
        (("--body-timeout", "inf"), "--body-timeout must be a positive number"),
        (("--model", "remote:http://127.0.0.1:9"), "would only proxy"),
        (("--host", "203.0.113.7"), "cannot listen on 203.0.113.7"),
    ],
)
def test_serve_bad_options_are_one_line_exit_2(args, needle):
    res = runner.invoke(app, ["serve", "--device", "cpu", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.output


def test_serve_command_in_a_subprocess(data, tmp_path):
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "ZOATTACK_TOKEN": "t0k"}
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
            "--output",
            "probs",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for start-up
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "zoattack serve did not come up in 60 s"
            time.sleep(0.2)
        model = remote_model(url, dataset=data, token="t0k", retries=1)
        probs = model(data.images[:3])
        assert probs.shape == (3, 10) and abs(float(probs.sum()) - 3) < 1e-4
        assert model.info["output"] == "probs" and model.server_stats()["scored_inputs"] == 3
        assert httpx.get(f"{url}/stats").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert f"on http://127.0.0.1:{port}" in stderr and "token required" in stderr
