"""--download of published weights against a local HTTP server on 127.0.0.1: hash match,
mismatch, truncated transfer, offline, cache reuse, and a published ResNet-20 checkpoint in its
authors' format loaded into the zoo architecture."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from typing import ClassVar

import pytest
import torch

from zoattack.data.files import MissingFileError
from zoattack.models import create_model
from zoattack.models import download as dl
from zoattack.models.zoo import ResNet20


class _Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    truncate: ClassVar[set[str]] = set()
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A truncated transfer: the header promised more than is sent.
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Files.files, _Files.truncate, _Files.hits = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Files
    httpd.shutdown()
    httpd.server_close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_fetch_verifies_and_caches(server, tmp_path):
    url, files = server
    body = b"weights" * 1000
    files.files["/w.bin"] = body
    dest = tmp_path / "cache" / "w.bin"
    assert dl.fetch(url + "/w.bin", dest, sha(body)) == dest
    assert dest.read_bytes() == body
    dl.fetch(url + "/w.bin", dest, sha(body))
    assert files.hits == ["/w.bin"]  # the verified cached file is not fetched again
    assert list(dest.parent.iterdir()) == [dest]  # no .part files left


def test_mismatch_and_truncation_never_replace_a_good_file(server, tmp_path):
    url, files = server
    good = b"good file"
    dest = tmp_path / "w.bin"
    dest.write_bytes(good)
    files.files["/evil.bin"] = b"tampered"
    with pytest.raises(dl.DownloadError, match="checksum mismatch") as info:
        dl.fetch(url + "/evil.bin", dest, sha(b"what was published"))
    assert sha(b"tampered") in str(info.value)
    assert dest.read_bytes() == good
    files.files["/cut.bin"] = b"x" * 100_000
    files.truncate.add("/cut.bin")
    with pytest.raises(dl.DownloadError):
        dl.fetch(url + "/cut.bin", dest, sha(b"x" * 100_000))
    assert dest.read_bytes() == good
    assert list(tmp_path.iterdir()) == [dest]


def test_offline_says_where_the_file_was_expected(tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(dl.DownloadError, match="offline") as info:
        # Port 9 on 127.0.0.1 (discard) refuses connections here: an offline stand-in.
        dl.fetch("http://127.0.0.1:9/w.bin", dest, sha(b""), timeout=5)
    assert str(dest) in str(info.value) and not dest.exists()


def _authors_checkpoint(net: ResNet20) -> bytes:
    """The published file's format: DataParallel prefixes, `linear` head, a wrapper dict."""
    state = {"module." + k.replace("fc.", "linear.", 1): v for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "best_prec1": 91.25}, buf)
    return buf.getvalue()


def test_published_resnet20_downloads_and_loads(server, tmp_path, monkeypatch):
    url, files = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ref = ResNet20(3, 10, generator=torch.Generator().manual_seed(0)).eval()
    blob = _authors_checkpoint(ref)
    files.files["/resnet20.th"] = blob
    pub = dl.Published(
        url=url + "/resnet20.th",
        sha256=sha(blob),
        filename="resnet20-test.th",
        source="test",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        rename=(("linear.", "fc."),),
    )
    monkeypatch.setitem(dl.PUBLISHED, ("resnet20", "cifar10"), pub)
    # Without --download: one line naming where the file was expected.
    with pytest.raises(MissingFileError, match="--download") as info:
        create_model("resnet20", dataset="cifar10", pretrained=True)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet20-test.th") in str(info.value)
    model = create_model("resnet20", dataset="cifar10", pretrained=True, download=True)
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "resnet20-test.th").is_file()
    x = torch.rand(2, 3, 32, 32)
    m = torch.tensor(pub.mean).view(1, 3, 1, 1)
    s = torch.tensor(pub.std).view(1, 3, 1, 1)
    with torch.no_grad():
        # The authors normalise outside the model; ours does it in its first layer.
        ref.normalize.mean.zero_()
        ref.normalize.std.fill_(1.0)
        torch.testing.assert_close(model(x), ref((x - m) / s))
    # A corrupted cache is refused, not silently used.
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet20-test.th").write_bytes(b"junk")
    with pytest.raises(dl.DownloadError, match="does not match"):
        create_model("resnet20", dataset="cifar10", pretrained=True)


def test_missing_pin_refuses_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    pub = dl.PUBLISHED[("resnet20", "cifar10")]
    assert pub.url.startswith("https://") and pub.filename.endswith(".th")
    if pub.sha256 is None:
        with pytest.raises(dl.DownloadError, match="no SHA-256 is pinned"):
            create_model("resnet20", dataset="cifar10", pretrained=True, download=True)
    else:
        assert len(pub.sha256) == 64
