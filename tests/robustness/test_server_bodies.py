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


# Issue 24 item 2: a JSON body is checked against the declared shape before any Python object
# is built per number or list (json.loads took 33x a body of empty lists).


def _json_peak(body: bytes, shape=SHAPE, max_batch=4096):
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            out = decode_batch(body, "application/json", shape, max_batch)
        except BadRequest as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_json_of_empty_lists_is_refused_before_parsing(corpus):
    corpus.add("http")
    body = b'{"inputs": [' + b"[]," * 700_000 + b"[]]}"  # 2.1 MB: 700k lists for json.loads
    out, peak = _json_peak(body)
    assert isinstance(out, BadRequest) and out.status == 422, out
    assert "shaped (N, 1, 28, 28)" in out.message
    assert peak < 256 * 1024, f"{peak:,} bytes traced for a {len(body):,}-byte body"


def test_json_past_max_batch_is_refused_from_its_brackets(corpus):
    corpus.add("http")
    one = json.dumps(np.zeros(SHAPE).tolist()).encode()
    body = b'{"inputs": [' + b",".join([one] * 300) + b"]}"  # 300 inputs, max batch 64
    out, peak = _json_peak(body, max_batch=64)
    assert isinstance(out, BadRequest) and out.status == 413 and "max batch of 64" in out.message
    assert peak < 256 * 1024, f"{peak:,} bytes traced for a {len(body):,}-byte body"


def test_json_floats_decode_within_the_array_and_a_few_mib():
    x = np.random.default_rng(1).random((200, *SHAPE))
    body = json.dumps({"inputs": x.tolist()}).encode()  # ~3 MB of text, 1.25 MB of float64
    out, peak = _json_peak(body)
    np.testing.assert_array_equal(out, x)
    # json.loads + np.asarray traced ~6x the body here; now the array and ~1 MiB slices.
    assert peak < x.nbytes + 6 * 2**20, f"{peak:,} bytes traced for a {len(body):,}-byte body"
    assert peak < len(body) * 2


def test_big_json_of_another_form_is_refused_unparsed(corpus):
    corpus.add("http")
    body = b'{"pixels": [' + b"0," * 200_000 + b"0]}"
    out, peak = _json_peak(body)
    assert isinstance(out, BadRequest) and out.status == 413 and '{"inputs"' in out.message
    assert peak < 256 * 1024


@SETTINGS
@given(
    value=st.recursive(
        st.integers(-5, 5) | st.floats(-10, 10, allow_nan=False),
        lambda inner: st.lists(inner, min_size=0, max_size=3),
        max_leaves=40,
    ),
    spaces=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
)
def test_fast_json_decoder_reads_what_json_loads_reads_or_refuses(value, spaces):
    """The shape-first decoder either refuses or returns exactly np.asarray(json.loads(...))."""
    from zoattack.remote.jsonbody import NotABatch, decode_inputs, inputs_span

    body = json.dumps({"inputs": [value]}, separators=spaces).encode()
    span = inputs_span(body)
    assert span is not None
    try:
        want = np.asarray(json.loads(body)["inputs"], np.float64)
    except ValueError:
        want = None
    for shape in {(1,), (2,), (3,), (1, 1), (2, 2), (3, 1), (1, 3), (2, 3), (2, 2, 2)}:
        try:
            got = decode_inputs(body, span, shape, 64)
        except NotABatch:
            assert want is None or want.shape[1:] != shape
            continue
        assert want is not None and got.shape == want.shape and got.shape[1:] == shape
        np.testing.assert_array_equal(got, want)


def test_stalled_and_abandoned_bodies_and_unauthenticated_docs(victim, corpus):
    """Issue 24 items 3 and 7 in the corpus: a body that stops coming gets 408 and a closed
    connection; one abandoned mid-way leaves the server serving; with a token the schema is
    401 without it and the docs pages do not exist."""
    import socket
    import time

    import httpx

    from zoattack.remote.server import BackgroundServer

    app = create_app(victim, input_shape=SHAPE, num_classes=10, token="t", body_timeout=0.5)
    head = (
        b"POST /score HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\nContent-Length: 999\r\n\r\n"
    )
    with BackgroundServer(app) as server:
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        stalled.sendall(head + b"\x93NUMPY")
        abandoned = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        abandoned.sendall(head + b"{")
        abandoned.close()
        t0, reply = time.monotonic(), b""
        while not reply.endswith(b"}") and time.monotonic() - t0 < 5:
            chunk = stalled.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 ") and b"within 0.5 s" in reply, reply
        assert stalled.recv(1) == b""  # closed by the server
        stalled.close()
        for _ in range(2):
            corpus.add("http")
        ok = httpx.post(
            f"{server.url}/score",
            content=json.dumps({"inputs": np.zeros((1, *SHAPE)).tolist()}),
            headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        )
        assert ok.status_code == 200
        for path, status in (("/openapi.json", 401), ("/docs", 404), ("/redoc", 404)):
            corpus.add("http")
            assert httpx.get(f"{server.url}{path}").status_code == status, path
