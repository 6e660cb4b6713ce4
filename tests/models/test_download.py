"""--download of published weights against a local HTTP server on 127.0.0.1: hash match,
mismatch, truncated transfer, offline, cache reuse, and a published ResNet-20 checkpoint in its
authors' format loaded into the zoo architecture."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zoattack.cli.main import app
from zoattack.data.files import MissingFileError
from zoattack.models import create_model
from zoattack.models import download as dl
from zoattack.models.zoo import ResNet20


@pytest.fixture()
def server(loopback_files):
    return loopback_files


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


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44", "resnet56"])
def test_idelbayev_resnets_are_pinned(name):
    pub = dl.PUBLISHED[(name, "cifar10")]
    assert pub.url == (
        "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
        + pub.filename
    )
    assert pub.sha256 is not None and len(pub.sha256) == 64
    # torch hub's convention: the file name ends in the first 8 hex digits of its SHA-256
    assert pub.filename == f"{name}-{pub.sha256[:8]}.th"


@pytest.mark.parametrize("name", ["resnet32", "resnet56"])
def test_deeper_published_resnets_load_from_a_pinned_cache(name, tmp_path, monkeypatch):
    from zoattack.models import MODELS

    cls = MODELS.get(name).factory
    ref = cls(3, 10, generator=torch.Generator().manual_seed(1)).eval()
    blob = _authors_checkpoint(ref)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pub = dataclasses.replace(dl.PUBLISHED[(name, "cifar10")], sha256=sha(blob))
    monkeypatch.setitem(dl.PUBLISHED, (name, "cifar10"), pub)
    with pytest.raises(MissingFileError, match="--download"):
        create_model(name, dataset="cifar10", pretrained=True)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / pub.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(blob)
    # Cached and matching its pin: the default on cifar10, no --download, no network.
    model = create_model(name, dataset="cifar10", pretrained=True)
    for k, v in ref.state_dict().items():
        if not k.startswith("normalize."):
            torch.testing.assert_close(model.state_dict()[k], v)
    assert tuple(model.normalize.mean.flatten().tolist()) == pytest.approx(pub.mean)


# ----------------------------------------------------------------------------- the CLI
# `zoattack run` / `zoattack eval --model resnet20 --dataset cifar10 --download` end to end:
# a tiny CIFAR-10 test batch on disk, the published checkpoint served from 127.0.0.1.

runner = CliRunner()


def _cifar_test_batch(root: Path, n: int = 3) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": [i % 10 for i in range(n)], "data": data}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return folder


@pytest.fixture()
def published(server, tmp_path, monkeypatch):
    """The published resnet20/cifar10 entry pointed at the local server; returns its body."""
    url, files = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    blob = _authors_checkpoint(ResNet20(3, 10, generator=torch.Generator().manual_seed(0)))
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
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet20-test.th"
    return {"pub": pub, "blob": blob, "cached": cached, "files": files, "url": url}


def _cli(command: str, tmp_path: Path, *extra: str):
    data = tmp_path / "data"
    if not data.exists():
        _cifar_test_batch(data)
    base = [command, "--model", "resnet20", "--dataset", "cifar10", "--data-dir", str(data)]
    base += ["--images", "2", "--device", "cpu"]
    base += ["--budget", "20"] if command == "run" else ["--steps", "2", "--restarts", "1"]
    return runner.invoke(app, [*base, *extra])


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize("command", ["run", "eval"])
def test_cli_download_only_when_asked_then_cached(command, published, tmp_path):
    line = _one_error_line(_cli(command, tmp_path))
    assert "--download" in line and "resnet20-test.th" in line
    assert published["files"].hits == [] and not published["cached"].exists()
    res = _cli(command, tmp_path, "--download", "--json")
    assert res.exit_code == 0, res.output
    assert published["cached"].read_bytes() == published["blob"]
    settings = json.loads(res.stdout)["settings"]
    assert "download" not in settings and "sha256" not in settings  # reaching, not results
    # Cached and verified: later runs need neither the network nor --download.
    assert _cli(command, tmp_path, "--json").exit_code == 0
    assert published["files"].hits == ["/resnet20.th"]


def test_cli_checksum_mismatch_exits_2_and_keeps_nothing(published, tmp_path):
    published["files"].files["/resnet20.th"] = b"tampered" + published["blob"]
    line = _one_error_line(_cli("run", tmp_path, "--download"))
    assert "checksum mismatch" in line and published["pub"].sha256 in line
    assert not published["cached"].parent.exists() or not any(published["cached"].parent.iterdir())


def test_cli_interrupted_download_exits_2_and_keeps_the_good_file(published, tmp_path):
    # A good copy in --model-dir is used as is; the broken server is never asked.
    good = tmp_path / "mine" / "resnet20-test.th"
    good.parent.mkdir()
    good.write_bytes(published["blob"])
    published["files"].truncate.add("/resnet20.th")
    assert _cli("run", tmp_path, "--download", "--model-dir", str(good.parent)).exit_code == 0
    assert published["files"].hits == []
    line = _one_error_line(_cli("run", tmp_path, "--download"))
    assert "stopped at" in line or "cannot download" in line
    assert good.read_bytes() == published["blob"] and not published["cached"].exists()
    assert not any(published["cached"].parent.glob("*.part"))


def test_cli_offline_names_where_the_file_was_expected(published, tmp_path, monkeypatch):
    offline = dataclasses.replace(published["pub"], url="http://127.0.0.1:9/resnet20.th")
    monkeypatch.setitem(dl.PUBLISHED, ("resnet20", "cifar10"), offline)
    line = _one_error_line(_cli("run", tmp_path, "--download"))
    assert "offline" in line and str(published["cached"]) in line


def test_cli_unpinned_checkpoint_needs_the_users_sha256(published, tmp_path, monkeypatch):
    unpinned = dataclasses.replace(published["pub"], sha256=None)
    monkeypatch.setitem(dl.PUBLISHED, ("resnet20", "cifar10"), unpinned)
    line = _one_error_line(_cli("run", tmp_path, "--download"))
    assert "no SHA-256 is pinned" in line and "--sha256" in line
    assert published["files"].hits == []  # refused before any byte was fetched
    line = _one_error_line(_cli("run", tmp_path, "--download", "--sha256", "0" * 64))
    assert "checksum mismatch" in line and not published["cached"].exists()
    line = _one_error_line(_cli("run", tmp_path, "--download", "--sha256", "abc"))
    assert "64 hex digits" in line
    good = sha(published["blob"]).upper()  # as some tools print it
    assert _cli("run", tmp_path, "--download", "--sha256", good).exit_code == 0
    assert published["cached"].read_bytes() == published["blob"]
    # The user's checksum also guards the cached file.
    line = _one_error_line(_cli("run", tmp_path, "--sha256", "1" * 64))
    assert "does not match the --sha256" in line


def test_cli_sha256_must_agree_with_a_pin_and_needs_published_weights(published, tmp_path):
    line = _one_error_line(_cli("run", tmp_path, "--download", "--sha256", "2" * 64))
    assert "disagrees with the SHA-256 pinned" in line
    res = runner.invoke(
        app,
        ["run", "--model", "small_cnn", "--images", "2", "--budget", "10", "--sha256", "3" * 64],
    )
    assert "--sha256" in _one_error_line(res)
