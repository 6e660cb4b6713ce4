"""Issue 10 item 5 and the HTTP part of the corpus: `/score` answers 4xx, never 5xx, to any
malformed body, and never allocates what a ``.npy`` header merely claims."""

from __future__ import annotations

import base64
import io
import json
import resource
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoattack.remote.server import NPY, BadRequest, create_app, decode_batch

SHAPE = (1, 28, 28)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client(victim):
    from fastapi.testclient import TestClient

    app = create_app(victim, input_shape=SHAPE, num_classes=10, max_batch=64, max_bytes=2**20)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def npy_header(shape: tuple[int, ...], descr: str = "<f4", version: int = 1) -> bytes:
    """A hand-made .npy header (numpy would refuse to build the arrays these claim)."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    pre = 10 if version == 1 else 12
    pad = -(pre + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text


def post(client, body: bytes, ctype: str = NPY):
    return client.post("/score", content=body, headers={"Content-Type": ctype})


def check(resp, corpus, kind: str, ok: bool = False) -> None:
    corpus.add(kind)
    assert resp.status_code < 500, (resp.status_code, resp.text)
    if not ok:
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
        assert resp.json()["detail"]


def test_billion_image_header_is_refused_before_allocating(client, corpus):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    body = npy_header((10**9, *SHAPE)) + b"\0" * 256
    resp = post(client, body)
    check(resp, corpus, "http")
    assert resp.status_code == 413 and "max batch" in resp.json()["detail"]
    # 3 TB claimed; a few MB of growth at most.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


@pytest.mark.parametrize(
    "shape, status",
    [
        ((64, *SHAPE), 400),  # within the caps, but the data is not there
        ((3, 1, 28), 422),
        ((2**62, *SHAPE), 413),
        ((), 422),
    ],
)
def test_headers_that_lie_are_4xx(client, corpus, shape, status):
    resp = post(client, npy_header(shape) + b"\0" * 1024)
    check(resp, corpus, "http")
    assert resp.status_code == status, resp.text


def test_npy_b64_gets_the_same_checks(client, corpus):
    raw = npy_header((10**9, *SHAPE))
    resp = post(client, json.dumps({"npy_b64": base64.b64encode(raw).decode()}).encode(), "")
    check(resp, corpus, "http")
    assert resp.status_code == 413


def test_decoder_views_data_without_np_load():
    x = np.random.default_rng(0).random((3, *SHAPE)).astype(">f8")
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(x))
    got = decode_batch(buf.getvalue(), NPY, SHAPE, 8)
    np.testing.assert_array_equal(got, x)
    got.flags.writeable = True  # a real copy, not a read-only view of the body
    with pytest.raises(BadRequest) as info:
        decode_batch(buf.getvalue()[:-8], NPY, SHAPE, 8)
    assert info.value.status == 400


def test_valid_batch_still_scores(client, corpus):
    buf = io.BytesIO()
    np.save(buf, np.full((2, *SHAPE), 0.5, np.float32))
    resp = post(client, buf.getvalue())
    check(resp, corpus, "http", ok=True)
    assert resp.status_code == 200 and resp.json()["n"] == 2


CTYPES = st.sampled_from([NPY, "application/octet-stream", "application/json", "", "text/plain"])


@SETTINGS
@given(body=st.binary(max_size=300), ctype=CTYPES)
def test_random_bytes(client, corpus, body, ctype):
    check(post(client, body, ctype), corpus, "http")


DESCRS = st.sampled_from(["<f4", ">f8", "<f2", "<i8", "|u1", "|O", "<c8", "|b1", "<f16", "zz"])


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 2**40), max_size=5).map(tuple),
    descr=DESCRS,
    version=st.sampled_from([1, 2]),
    data=st.integers(0, 4096),
)
def test_lying_npy_headers(client, corpus, shape, descr, version, data):
    body = npy_header(shape, descr, version) + b"\x3f" * data
    resp = post(client, body)
    exact = descr == "<f4" and shape[1:] == SHAPE and 4 * int(np.prod(shape)) == data
    check(resp, corpus, "http", ok=exact and shape[0] <= 64)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=30,
)


@SETTINGS
@given(value=JSON, key=st.sampled_from(["inputs", "npy_b64", "other"]))
def test_malformed_json(client, corpus, value, key):
    body = json.dumps({key: value}).encode()
    check(post(client, body, "application/json"), corpus, "http")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"inputs": [' + b"9" * 5000 + b"]}",
        b'{"inputs": [1e999]}',
        b'{"inputs": [' + b"1" + b"0" * 400 + b"]}",
        b"\xff\xfe{}",
        b'{"npy_b64": 5}',
        b'{"npy_b64": "!!!"}',
    ],
)
def test_pathological_json(client, corpus, body):
    check(post(client, body, "application/json"), corpus, "http")
