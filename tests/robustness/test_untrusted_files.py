"""Issue 10 items 4 and 6: untrusted files and out-of-range options are one clear line and
exit 2 (never a traceback), and a refused run leaves no folder behind."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from zoattack.data import load_dataset
from zoattack.data.files import BadFileError
from zoattack.models.weights import read_state_dict

RUN = ("run", "--images", "2", "--budget", "10", "--device", "cpu")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, b"\x10\x00\x00\x00\x00\x00\x00\x00{", bytes(range(256)) * 4],
    ids=["empty", "short", "truncated-header", "random"],
)
def test_bad_safetensors_weights(tmp_path, zo_cli, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(BadFileError, match="w.safetensors"):
        read_state_dict(path)
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--weights", str(path), "--out", str(out))
    assert res.exit_code == 2
    assert "w.safetensors" in res.output and "download or export it again" in res.output
    assert not out.exists()


def test_truncated_real_safetensors(tmp_path, zo_cli):
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    res = zo_cli(*RUN, "--weights", str(path))
    assert res.exit_code == 2 and "cut.safetensors" in res.output


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_image_folder_with_a_bad_png(tmp_path, zo_cli, bad):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (8, 8), 128).save(tmp_path / cls / "ok.png")
    (tmp_path / "a" / "x.png").write_bytes(bad)
    with pytest.raises(BadFileError, match="x.png"):
        load_dataset("imagefolder", split="test", data_dir=str(tmp_path))
    res = zo_cli(
        "train", "--model", "small_cnn", "--dataset", "imagefolder", "--data-dir", str(tmp_path),
        "--epochs", "1", "--out", str(tmp_path / "w.safetensors"), "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 2 and "x.png" in res.output
    assert not (tmp_path / "w.safetensors").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage that is no pickle",
        pickle.dumps({"data": _Evil(), "labels": [0]}),
        pickle.dumps([1, 2, 3]),
        pickle.dumps({"labels": [0]}),
        pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}),
        pickle.dumps({"data": np.zeros((1, 100), np.uint8), "labels": [0]}),
        pickle.dumps({b"data": np.zeros((1, 3072), np.float64), b"labels": [0]}),
        pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [11]}),
    ],
    ids=["empty", "garbage", "imports", "list", "no-data", "count", "size", "dtype", "range"],
)
def test_bad_cifar_batch(tmp_path, zo_cli, content, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(BadFileError, match="test_batch"):
        load_dataset("cifar10", split="test", data_dir=str(tmp_path))
    assert "pwned" not in capsys.readouterr().out
    res = zo_cli(*RUN, "--dataset", "cifar10", "--data-dir", str(tmp_path))
    assert res.exit_code == 2 and "test_batch" in res.output and "pwned" not in res.output


def test_good_cifar_batch_still_loads(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 4]}))
    ds = load_dataset("cifar10", split="test", data_dir=str(tmp_path))
    assert ds.images.shape == (2, 3, 32, 32) and ds.labels.tolist() == [3, 4]


def test_truncated_idx(tmp_path):
    from zoattack.data.idx import read_idx, write_idx

    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(BadFileError, match="truncated"):
        read_idx(path)
    gz = tmp_path / "x.gz"
    gz.write_bytes(b"\x1f\x8b" + b"\0" * 30)
    with pytest.raises(BadFileError):
        read_idx(gz)


def test_images_beyond_the_data_set_are_refused(tmp_path, zo_cli):
    out = tmp_path / "run"
    res = zo_cli(*RUN[:1], "--dataset", "digits", "--images", "100000", "--out", str(out))
    assert res.exit_code == 2
    assert "360" in res.output and "--images" in res.output
    assert not out.exists()


@pytest.mark.parametrize("budget", ["99999999999999999999", str(2**63)])
def test_budget_beyond_int64_writes_nothing(tmp_path, zo_cli, budget):
    out = tmp_path / "run"
    res = zo_cli("run", "--images", "1", "--budget", budget, "--device", "cpu", "--out", str(out))
    assert res.exit_code == 2 and "--budget" in res.output
    assert not out.exists()


def test_l2_eps_beyond_the_box_is_refused(tmp_path, zo_cli):
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--norm", "l2", "--eps", "300", "--out", str(out))
    assert res.exit_code == 2 and "28" in res.output and "1x28x28" in res.output
    assert not out.exists()
    # The box's own diameter is still allowed (a valid if pointless radius).
    from zoattack.jobs.attack import check_eps_fits

    check_eps_fits("l2", 28.0, (1, 28, 28))
    with pytest.raises(ValueError):
        check_eps_fits("l2", 8.01, (1, 8, 8))


def test_bad_card_next_to_weights(tmp_path, zo_cli):
    from zoattack.models import create_model

    net = create_model("small_cnn", dataset="fashion-mnist")
    from safetensors.torch import save_file

    w = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(w))
    for card in (
        "{not json",
        "[1, 2]",
        '{"architecture": "x"}',
        '{"architecture": {"config": {"hidden": "q"}}}',
    ):
        (tmp_path / "m.json").write_text(card)
        res = zo_cli(*RUN, "--weights", str(w))
        assert res.exit_code == 2 and "m.json" in res.output, (card, res.output)
    _ = io  # keep the import for the corpus helpers


@pytest.mark.parametrize("target", ["10", "99999999999999999999", "-1", "²", "sideways"])
def test_bad_target_is_refused_before_the_run_folder(tmp_path, zo_cli, target):
    # Found by the corpus: the target was only checked after run.json was written.
    out = tmp_path / "run"
    res = zo_cli(*RUN, "--target", target, "--out", str(out))
    assert res.exit_code == 2 and "--target" in res.output
    assert not out.exists()
