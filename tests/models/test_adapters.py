"""torchvision / timm / robustbench adapters on files written here; never touches the network."""

from __future__ import annotations

import sys

import pytest
import torch

from zoattack.data.files import MissingFileError
from zoattack.errors import UnknownNameError
from zoattack.models import MissingDependencyError, NormalizedModel, adapters, create_model


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_weights_file_round_trip(tmp_path, no_network):
    import torchvision

    src = torchvision.models.squeezenet1_1(weights=None, num_classes=10).eval()
    path = tmp_path / "sq.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path
    )
    model = create_model("torchvision:squeezenet1_1", dataset="cifar10", weights=path)
    assert isinstance(model, NormalizedModel) and not model.training
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src((x - mean) / std))


def test_torchvision_gray_input_and_imagenet_default(tmp_path):
    gray = create_model("torchvision:squeezenet1_1", dataset="fashion-mnist")
    assert gray(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    plain = create_model("torchvision:squeezenet1_1")
    assert plain.normalize.mean_values == adapters.IMAGENET_MEAN
    assert plain(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_torchvision_wrong_weights_say_what_does_not_fit(tmp_path):
    import torchvision

    path = tmp_path / "r.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None, num_classes=5).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit torchvision:squeezenet1_1.*shape mismatch"):
        create_model("torchvision:squeezenet1_1", dataset="cifar10", weights=path)


def test_weights_only_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        create_model("torchvision:squeezenet1_1", weights=path)


def test_torchvision_pretrained_missing_file_is_one_clear_error(tmp_path, no_network):
    with pytest.raises(MissingFileError) as info:
        create_model("torchvision:squeezenet1_1", pretrained=True, model_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "squeezenet1_1-b8a52dc0.pth") in msg
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in msg


def test_torchvision_pretrained_from_model_dir(tmp_path, no_network):
    import torchvision

    src = torchvision.models.squeezenet1_1(weights=None).eval()
    torch.save(src.state_dict(), tmp_path / "squeezenet1_1-b8a52dc0.pth")
    model = create_model(
        "torchvision:squeezenet1_1", dataset="cifar10", pretrained=True, model_dir=tmp_path
    )
    x = torch.rand(1, 3, 64, 64)
    assert model(x).shape == (1, 1000)  # the ImageNet head, ImageNet statistics
    assert model.normalize.mean_values == pytest.approx(adapters.IMAGENET_MEAN)


def test_unknown_torchvision_name_lists_close_matches():
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("torchvision:resnet181")


def test_missing_weights_file(tmp_path):
    with pytest.raises(MissingFileError, match=str(tmp_path / "nope.pt")):
        create_model("torchvision:squeezenet1_1", weights=tmp_path / "nope.pt")


# ----------------------------------------------------------------------------- timm


def test_timm_missing_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install timm"):
        create_model("timm:resnet18")


def test_timm_weights_file_round_trip(tmp_path, no_network):
    timm = pytest.importorskip("timm")
    src = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    from safetensors.torch import save_file

    save_file(src.state_dict(), str(tmp_path / "r18.safetensors"))
    model = create_model("timm:resnet18", dataset="cifar10", weights=tmp_path / "r18.safetensors")
    x = torch.rand(2, 3, 32, 32)
    m = model.normalize.mean
    s = model.normalize.std
    with torch.no_grad():
        torch.testing.assert_close(model(x), src((x - m) / s))
    gray = create_model("timm:resnet18", dataset="fashion-mnist")
    assert gray(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_timm_pretrained_missing_file(tmp_path, no_network, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(adapters, "_hf_cached", lambda cfg: None)
    with pytest.raises(MissingFileError, match=str(tmp_path / "resnet18.safetensors")):
        create_model("timm:resnet18", pretrained=True, model_dir=tmp_path)


def test_timm_pretrained_from_model_dir(tmp_path, no_network, monkeypatch):
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = timm.create_model("resnet18", pretrained=False).eval()
    torch.save(src.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("timm:resnet18", pretrained=True, model_dir=tmp_path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src((x - model.normalize.mean) / model.normalize.std))


# ----------------------------------------------------------------------------- robustbench


def test_robustbench_missing_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    with pytest.raises(MissingDependencyError, match="pip install"):
        create_model("robustbench:Standard", dataset="cifar10")


def test_robustbench_bad_threat_model():
    with pytest.raises(ValueError, match="threat-model"):
        create_model("robustbench:Standard", dataset="cifar10", threat_model="L7")


def _robustbench():
    try:
        return adapters.import_robustbench()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def test_robustbench_missing_checkpoint_checked_before_download(tmp_path, monkeypatch):
    _robustbench()
    import robustbench.utils

    def refuse(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(robustbench.utils, "load_model", refuse)
    with pytest.raises(MissingFileError) as info:
        create_model("robustbench:Standard", dataset="cifar10", model_dir=tmp_path)
    assert str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in str(info.value)
    with pytest.raises(UnknownNameError, match="Standard"):
        create_model("robustbench:Standrd", dataset="cifar10", model_dir=tmp_path)


def test_robustbench_loads_from_model_dir_and_weights(tmp_path):
    _robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    # Ding2020MMA (WRN-28-4, 5.8M params) is one of the smallest entries; Standard is 36M.
    net = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("L2")]["Ding2020MMA"]["model"]()
    folder = tmp_path / "cifar10" / "L2"
    folder.mkdir(parents=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, folder / "Ding2020MMA.pt")
    model = create_model(
        "robustbench:Ding2020MMA", dataset="cifar10", threat_model="l2", model_dir=tmp_path
    )
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(x))
    direct = create_model(
        "robustbench:Ding2020MMA",
        dataset="cifar10",
        threat_model="L2",
        weights=folder / "Ding2020MMA.pt",
    )
    with torch.no_grad():
        torch.testing.assert_close(direct(x), net(x))
