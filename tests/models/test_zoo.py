"""Zoo architectures: shapes per data set, normalization inside, seeded init without global RNG."""

from __future__ import annotations

import pytest
import torch

from zoattack.errors import UnknownNameError
from zoattack.models import (
    MODELS,
    Normalize,
    ResNet20,
    SmallCNN,
    count_parameters,
    create_model,
    list_models,
)
from zoattack.seeding import make_generator

SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "digits": (1, 8, 8)}


@pytest.mark.parametrize("name", ["resnet20", "small_cnn"])
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_shapes_follow_the_dataset(name, dataset):
    model = create_model(name, dataset=dataset, generator=make_generator(0))
    assert not model.training
    c, h, w = SHAPES[dataset]
    logits = model(torch.rand(3, c, h, w))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert model.config()["in_channels"] == c


def test_resnet20_is_the_paper_architecture():
    m = ResNet20(3, 10, generator=make_generator(0))
    assert 0.26e6 < count_parameters(m) < 0.28e6  # He et al. 2016, Table 6: 0.27M
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 19  # + 1 fc = 20 weighted layers (option A adds none)
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [3, 3, 3]
    assert [s[0].conv1.out_channels for s in (m.layer1, m.layer2, m.layer3)] == [16, 32, 64]
    b = ResNet20(3, 10, shortcut="B", generator=make_generator(0))
    assert len([mod for mod in b.modules() if isinstance(mod, torch.nn.Conv2d)]) == 21
    assert b(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="shortcut"):
        ResNet20(3, 10, shortcut="C")


@pytest.mark.parametrize(
    ("name", "blocks", "params"),
    [("resnet32", 5, 0.46e6), ("resnet44", 7, 0.66e6), ("resnet56", 9, 0.85e6)],
)
def test_deeper_cifar_resnets_are_the_papers(name, blocks, params):
    m = create_model(name, dataset="cifar10", generator=make_generator(0))
    # He et al. 2016, Table 6: 0.46M, 0.66M, 0.85M
    assert abs(count_parameters(m) - params) < 0.01e6
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [blocks] * 3
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) + 1 == 6 * blocks + 2
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_other_class_counts_and_channels():
    assert ResNet20(5, 7, generator=make_generator(0))(torch.rand(2, 5, 20, 20)).shape == (2, 7)
    assert SmallCNN(3, 4, input_size=(16, 12))(torch.rand(2, 3, 16, 12)).shape == (2, 4)


@pytest.mark.parametrize("name", ["resnet20", "small_cnn"])
def test_normalization_is_the_first_layer(name):
    model = create_model(name, dataset="cifar10", generator=make_generator(0))
    assert isinstance(model.normalize, Normalize)
    seen = {}
    model.conv1.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    x = torch.rand(2, 3, 32, 32)
    model(x)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], (x - mean) / std)
    assert not any(k.startswith("normalize") for k in model.state_dict())  # not persisted


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = ResNet20(1, 10, generator=make_generator(3))
    b = ResNet20(1, 10, generator=make_generator(3))
    c = ResNet20(1, 10, generator=make_generator(4))
    assert torch.equal(state, torch.random.get_rng_state())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert a.bn1.running_var.eq(1).all() and a.bn1.weight.eq(1).all()


def test_registry_listing_and_errors():
    assert list_models() == [
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "small_cnn",
        "small_cnn_robust",
        "resnet20_robust",
        "torchvision",
        "timm",
        "robustbench",
        "remote",
        "defended",
    ]
    assert list_models(zoo=True) == [
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "small_cnn",
        "small_cnn_robust",
        "resnet20_robust",
    ]
    assert MODELS.get("resnet20").description
    with pytest.raises(UnknownNameError, match="did you mean resnet20"):
        create_model("resnt20")
    with pytest.raises(UnknownNameError, match="torchvision"):
        create_model("torchvison:resnet18")
    with pytest.raises(ValueError, match="torchvision:NAME"):
        create_model("torchvision")
    with pytest.raises(ValueError, match="no ':NAME'"):
        create_model("resnet20:big")
    with pytest.raises(ValueError, match="threat_model"):
        create_model("resnet20", threat_model="Linf")


def test_imagefolder_like_dataset_object_sets_shape_and_stats():
    from zoattack.data import ImageDataset

    ds = ImageDataset(
        torch.rand(6, 3, 12, 12),
        torch.arange(6) % 3,
        ["a", "b", "c"],
        "imagefolder",
        "train",
        "memory",
    )
    model = create_model("small_cnn", dataset=ds, generator=make_generator(0))
    assert model(ds.images).shape == (6, 3)
    assert model.config()["input_size"] == [12, 12]
    assert abs(model.config()["mean"][0] - float(ds.images[:, 0].mean())) < 1e-3
