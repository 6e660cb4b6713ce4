"""The remote model client: same scores as in-process, micro-batching, exact counts, clear
errors at start, reply validation, rate limit, and the third-party adapter."""

from __future__ import annotations

import time

import pytest
import torch

from zoattack.blackbox import BlackBox
from zoattack.errors import InvalidScoresError, ZOAttackError
from zoattack.models import create_model
from zoattack.remote.client import RemoteError, RemoteScoresError, ScoreAPI, remote_model

FAST = {"retries": 2, "backoff": 0.01, "timeout": 2.0}


@pytest.mark.parametrize("wire", ["npy", "json"])
def test_scores_equal_in_process_and_counts_agree(healthy, victim, data, wire):
    model = create_model(f"remote:{healthy.url}", dataset=data, wire=wire, **FAST)
    assert list(model.parameters()) == [] and not model.training
    bb = BlackBox(model, budget=5)
    got = bb(data.images[:8].unsqueeze(1).expand(8, 3, 1, 28, 28).contiguous())
    with torch.no_grad():
        want = victim(data.images[:8].repeat_interleave(3, 0)).reshape(8, 3, 10)
    assert torch.equal(got, want)  # float32 both ways: bit-identical
    assert model.scored_inputs == healthy.server.config.app.state.stats.scored_inputs == 24
    assert bb.total_queries == 24 and model.server_stats()["scored_inputs"] == 24


def test_micro_batches_follow_the_server_limit(victim, data, app_for, serve):
    with serve(app_for(victim, max_batch=5)) as server:
        model = remote_model(server.url, dataset="fashion-mnist", max_batch=4, **FAST)
        out = model(data.images)  # 12 inputs -> 3 requests of at most 4
        with torch.no_grad():
            want = torch.cat([victim(data.images[i : i + 4]) for i in range(0, 12, 4)])
        assert torch.equal(out, want)
        assert model.requests == 3 and model.batch_limit() == 4
        stats = model.server_stats()
        assert stats["requests"] == 3 and stats["scored_inputs"] == 12 == model.scored_inputs


def test_bytes_limit_also_splits(victim, data, app_for, serve):
    with serve(app_for(victim, max_bytes=4 * 784 * 3 + 1024)) as server:
        model = remote_model(server.url, **FAST)
        assert model.batch_limit() == 3
        assert model(data.images[:7]).shape == (7, 10) and model.requests == 3


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://127.0.0.1:1", "bad remote URL"),
        ("http://", "bad remote URL"),
        ("not a url", "bad remote URL"),
    ],
)
def test_bad_urls(url, needle):
    with pytest.raises(RemoteError, match=needle):
        remote_model(url)


def test_unreachable_server_fails_fast_with_one_line():
    from zoattack.remote.server import bind_socket

    sock = bind_socket()  # bound but never listening: connections are refused
    port = sock.getsockname()[1]
    sock.close()
    t0 = time.perf_counter()
    with pytest.raises(RemoteError, match="cannot reach a score server") as exc:
        remote_model(f"http://127.0.0.1:{port}", retries=1)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(exc.value) and "zoattack serve" in str(exc.value)


def test_token_missing_wrong_right_and_from_env(victim, data, app_for, serve, monkeypatch):
    monkeypatch.delenv("ZOATTACK_TOKEN", raising=False)
    with serve(app_for(victim, token="tok")) as server:
        with pytest.raises(RemoteError, match="needs a bearer token"):
            remote_model(server.url)
        with pytest.raises(RemoteError, match="rejected the token"):
            remote_model(server.url, token="bad")
        assert remote_model(server.url, token="tok")(data.images[:2]).shape == (2, 10)
        monkeypatch.setenv("ZOATTACK_TOKEN", "tok")
        assert remote_model(server.url)(data.images[:2]).shape == (2, 10)


def test_data_set_mismatch_is_caught_at_construction(healthy):
    with pytest.raises(RemoteError, match="takes inputs shaped 1x28x28, but cifar10 images"):
        remote_model(healthy.url, dataset="cifar10")
    with pytest.raises(RemoteError, match="scores 10 classes, but digits has 10|digits images"):
        remote_model(healthy.url, dataset="digits")


def test_wrong_input_shape_at_call_time(healthy):
    model = remote_model(healthy.url, **FAST)
    with pytest.raises(ValueError, match="takes \\(1, 28, 28\\)"):
        model(torch.zeros(2, 3, 28, 28))


def test_nan_scores_raise_without_retrying(nan_model, app_for, serve):
    with serve(app_for(nan_model)) as server:
        model = remote_model(server.url, **FAST)
        bb = BlackBox(model)
        with pytest.raises(RemoteScoresError, match="NaN/inf scores for 1 of 3") as exc:
            bb.query(torch.zeros(3, 1, 28, 28))
        assert isinstance(exc.value, InvalidScoresError) and isinstance(exc.value, ZOAttackError)
        assert model.requests == 1 and bb.total_queries == 0 and model.scored_inputs == 0


def test_labels_server_gives_one_hot_scores(victim, data, app_for, serve):
    with serve(app_for(victim, output="labels")) as server:
        model = remote_model(server.url, **FAST)
        out = model(data.images[:6])
        with torch.no_grad():
            want = victim(data.images[:6]).argmax(1)
        assert torch.equal(out.argmax(1), want) and torch.equal(out.sum(1), torch.ones(6))


def test_4xx_is_not_retried(victim, data, app_for, serve):
    with serve(app_for(victim)) as server:
        model = remote_model(server.url, **FAST)
        with pytest.raises(RemoteError, match="HTTP 422: inputs must lie in \\[0, 1\\]"):
            model(torch.full((2, 1, 28, 28), 3.0))  # BlackBox would refuse this first
        assert model.requests == 1


def test_rate_limit_spaces_requests(healthy, data):
    model = remote_model(healthy.url, max_rps=20, max_batch=1, **FAST)
    t0 = time.perf_counter()
    model(data.images[:6])  # 6 requests at 20/s: at least 5 gaps of 50 ms
    assert time.perf_counter() - t0 >= 0.24
    with pytest.raises(ValueError, match="max_rps must be > 0"):
        remote_model(healthy.url, max_rps=-1)


def test_settings_from_environment(healthy, monkeypatch):
    monkeypatch.setenv("ZOATTACK_REMOTE_RETRIES", "1")
    monkeypatch.setenv("ZOATTACK_REMOTE_TIMEOUT", "3.5")
    monkeypatch.setenv("ZOATTACK_REMOTE_MAX_RPS", "100")
    model = remote_model(healthy.url)
    assert (model.retries, model.timeout) == (1, 3.5) and model.limiter is not None
    monkeypatch.setenv("ZOATTACK_REMOTE_RETRIES", "many")
    with pytest.raises(ValueError, match="ZOATTACK_REMOTE_RETRIES='many'"):
        remote_model(healthy.url)


def _third_party_app(victim, *, probs_ok: bool = True):
    """A score API that is not zoattack's: its own field names, probabilities nested deep."""
    from fastapi import FastAPI

    api = FastAPI()
    seen: list[int] = []

    @api.post("/v1/classify")
    def classify(body: dict) -> dict:
        x = torch.tensor(body["instances"], dtype=torch.float32)
        assert body["model"] == "fmnist-v2"
        seen.append(len(x))
        with torch.no_grad():
            p = torch.softmax(victim(x), 1)
        if not probs_ok:
            p = p * 2
        return {"result": {"predictions": p.tolist()}}

    api.state.seen = seen
    return api


def test_score_api_adapter_for_third_party_apis(victim, data, serve):
    app = _third_party_app(victim)
    with serve(app) as server:
        api = ScoreAPI(
            f"{server.url}/v1/classify",
            input_shape=(1, 28, 28),
            num_classes=10,
            request_field="instances",
            response_field="result.predictions",
            template={"model": "fmnist-v2"},
            max_batch=5,
            **FAST,
        )
        bb = BlackBox(api, output="logits", budget=3)
        out = bb.query(data.images)
        with torch.no_grad():
            want = torch.softmax(victim(data.images), 1)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
        assert app.state.seen == [5, 5, 2]
        assert api.scored_inputs == bb.total_queries == 12
        wrong = ScoreAPI(
            f"{server.url}/v1/classify",
            input_shape=(1, 28, 28),
            num_classes=10,
            request_field="instances",
            response_field="result.scores",
            template={"model": "fmnist-v2"},
            **FAST,
        )
        with pytest.raises(RemoteError, match="3 attempts.*no 'result.scores' in the reply"):
            wrong(data.images[:2])
    with serve(_third_party_app(victim, probs_ok=False)) as server:
        api = ScoreAPI(
            f"{server.url}/v1/classify",
            input_shape=(1, 28, 28),
            num_classes=10,
            request_field="instances",
            response_field="result.predictions",
            template={"model": "fmnist-v2"},
            **FAST,
        )
        with pytest.raises(RemoteScoresError, match="rows sum to 2"):
            api(data.images[:2])


def test_float16_wire_is_close_and_bad_client_options(healthy, victim, data):
    model = remote_model(healthy.url, wire_dtype="float16", **FAST)
    with torch.no_grad():
        want = victim(data.images[:4])
    torch.testing.assert_close(model(data.images[:4]), want, atol=0.05, rtol=0)
    for kw, needle in (
        ({"wire": "xml"}, "wire must be npy or json"),
        ({"wire_dtype": "int8"}, "wire_dtype"),
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"max_batch": 0}, "max_batch"),
    ):
        with pytest.raises(ValueError, match=needle):
            remote_model(healthy.url, **kw)
