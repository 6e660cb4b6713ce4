"""The score server over real HTTP: formats, validation (4xx with one clear line), limits,
auth, replay of retried requests, and the server-side counter."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_json_npy_and_b64_bodies_give_the_model_scores(healthy, victim, data):
    x = data.images[:5].numpy()
    with torch.no_grad():
        want = victim(data.images[:5]).numpy()
    with httpx.Client(base_url=healthy.url) as http:
        assert http.get("/health").json() == {"status": "ok"}
        info = http.get("/info").json()
        assert info["input_shape"] == [1, 28, 28] and info["num_classes"] == 10
        assert info["output"] == "logits"
        r = http.post("/score", json={"inputs": x.tolist()})
        assert r.status_code == 200 and r.json()["n"] == 5
        np.testing.assert_array_equal(np.asarray(r.json()["scores"], np.float32), want)
        r = http.post(
            "/score",
            content=npy(x),
            headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
        )
        assert r.headers["content-type"] == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), want)
        r = http.post(
            "/score", json={"npy_b64": base64.b64encode(npy(x.astype(np.float16))).decode()}
        )
        assert r.status_code == 200
        np.testing.assert_allclose(np.asarray(r.json()["scores"]), want, atol=0.05)
        assert http.get("/stats").json()["scored_inputs"] == 15
        assert http.get("/openapi.json").json()["info"]["title"] == "zoattack score server"
        assert http.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("body", "ctype", "status", "needle"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"pixels": []}', "application/json", 400, '{"inputs"'),
        (b'{"inputs": [[1, 2], [3]]}', "application/json", 422, "rectangular"),
        (b"\x93NUMPY junk", "application/x-npy", 400, "not a readable .npy"),
        (b"abc", "text/plain", 415, "unsupported Content-Type"),
        (npy(np.zeros((2, 1, 28, 28), np.int64)), "application/x-npy", 422, "floating point"),
        (
            npy(np.zeros((2, 3, 28, 28), np.float32)),
            "application/x-npy",
            422,
            "shaped (N, 1, 28, 28), got (2, 3, 28, 28)",
        ),
        (npy(np.zeros((1, 28, 28), np.float32)), "application/x-npy", 422, "batch of one"),
        (npy(np.full((2, 1, 28, 28), 1.5, np.float32)), "application/x-npy", 422, "[0, 1]"),
        (npy(np.full((2, 1, 28, 28), np.nan, np.float32)), "application/x-npy", 422, "NaN"),
        (npy(np.zeros((9, 1, 28, 28), np.float32)), "application/x-npy", 413, "max batch of 8"),
    ],
)
def test_bad_requests_get_a_4xx_with_one_clear_line(
    victim, app_for, serve, body, ctype, status, needle
):
    with serve(app_for(victim, max_batch=8)) as server:
        r = httpx.post(f"{server.url}/score", content=body, headers={"Content-Type": ctype})
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        assert needle in detail and "\n" not in detail
        stats = httpx.get(f"{server.url}/stats").json()
        assert stats["scored_inputs"] == 0 and stats["rejected"] == 1


def test_payload_cap_and_token(victim, app_for, serve):
    with serve(app_for(victim, max_bytes=4096, token="s3cret")) as server:
        url = server.url
        assert httpx.get(f"{url}/health").status_code == 200  # open for load balancers
        for path in ("/info", "/stats"):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        x = npy(np.zeros((1, 1, 28, 28), np.float32))
        r = httpx.post(f"{url}/score", content=x, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "bearer token" in r.json()["detail"]
        auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/x-npy"}
        assert httpx.post(f"{url}/score", content=x, headers=auth).status_code == 200
        big = npy(np.zeros((2, 1, 28, 28), np.float32))  # 6,400 bytes > 4,096
        r = httpx.post(f"{url}/score", content=big, headers=auth)
        assert r.status_code == 413 and "4,096" in r.json()["detail"]

        def chunked():  # no Content-Length: the cap holds while reading
            yield big[:3000]
            yield big[3000:]

        r = httpx.post(f"{url}/score", content=chunked(), headers=auth)
        assert r.status_code == 413
        assert httpx.get(f"{url}/stats", headers=auth).json()["scored_inputs"] == 1


def test_retried_request_is_replayed_not_rescored(healthy, data):
    x = npy(data.images[:4].numpy())
    headers = {"Content-Type": "application/x-npy", "Idempotency-Key": "abc123"}
    with httpx.Client(base_url=healthy.url) as http:
        first = http.post("/score", content=x, headers=headers)
        again = http.post("/score", content=x, headers=headers)
        assert first.json() == again.json()
        assert "x-replayed" not in first.headers and again.headers["x-replayed"] == "1"
        other = http.post("/score", content=x, headers={**headers, "Idempotency-Key": "z"})
        assert other.status_code == 200
        stats = http.get("/stats").json()
    assert stats == {"scored_inputs": 8, "requests": 3, "replayed": 1, "rejected": 0}


def test_probs_and_labels_outputs(victim, data, app_for, serve):
    x = data.images[:6].numpy().tolist()
    with torch.no_grad():
        logits = victim(data.images[:6])
    with serve(app_for(victim, output="probs")) as server:
        p = np.asarray(httpx.post(f"{server.url}/score", json={"inputs": x}).json()["scores"])
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
        np.testing.assert_allclose(p, torch.softmax(logits, 1).numpy(), atol=1e-6)
    with serve(app_for(victim, output="labels")) as server:
        lab = httpx.post(f"{server.url}/score", json={"inputs": x}).json()["scores"]
        assert lab == logits.argmax(1).tolist()


def test_create_app_rejects_bad_settings(victim):
    from zoattack.remote.server import create_app

    for kw, needle in (
        ({"output": "softmax"}, "logits, probs or labels"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_bytes": 10}, "max_bytes"),
        ({"num_classes": 1}, "num_classes"),
    ):
        with pytest.raises(ValueError, match=needle):
            create_app(victim, **{"input_shape": (1, 28, 28), "num_classes": 10, **kw})


def test_replay_memory_is_bounded(victim, data, app_for, serve):
    x = npy(data.images[:2].numpy())
    with (
        serve(app_for(victim, replay_cache=1)) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        for key in ("a", "b", "a"):  # "b" pushed "a" out: its late retry is scored again
            http.post(
                "/score",
                content=x,
                headers={"Content-Type": "application/x-npy", "Idempotency-Key": key},
            )
        assert http.get("/stats").json()["scored_inputs"] == 6


class _Gate(torch.nn.Module):
    """Blocks the forward of a batch whose first pixel is 1 until released (other batches
    pass): one request can be held inside the model while others are sent."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.flatten()[0]) == 1.0:
            self.entered.set()
            assert self.release.wait(60), "the held request was never released"
        return torch.zeros(x.shape[0], 10)


def test_a_slow_keyed_request_holds_up_no_replay_or_refusal(app_for, serve):
    """Forwards run one at a time (the model's lock), but a keyed request in the model must not
    make a replay or a refusal of another keyed request wait (the load test found a global lock
    held across the forward: every keyed request queued behind the slowest one)."""
    import threading

    gate = _Gate()
    npy = "application/x-npy"

    def body(value: float) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.full((1, 1, 28, 28), value, np.float32))
        return buf.getvalue()

    def post(content: bytes, key: str, timeout: float = 30) -> httpx.Response:
        headers = {"Content-Type": npy, "Idempotency-Key": key}
        return httpx.post(f"{server.url}/score", content=content, headers=headers, timeout=timeout)

    with serve(app_for(gate)) as server:
        assert post(body(0.5), "C").status_code == 200
        held: dict[str, int] = {}
        t = threading.Thread(target=lambda: held.update(A=post(body(1.0), "A", 60).status_code))
        t.start()
        try:
            assert gate.entered.wait(30)
            replay = post(body(0.5), "C")
            assert replay.status_code == 200 and replay.headers.get("X-Replayed") == "1"
            assert post(b"not a npy file", "D").status_code in (400, 413, 422)
            assert "A" not in held  # both answered while A was still in the model
        finally:
            gate.release.set()
            t.join(60)
        assert held["A"] == 200
        assert httpx.get(f"{server.url}/stats").json()["scored_inputs"] == 2
