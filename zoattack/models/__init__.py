"""Victim models: a small zoo with shipped Fashion-MNIST weights, and third-party adapters.

``create_model(name, dataset=..., weights=..., pretrained=...)`` builds every model; all take
images in [0, 1] (normalization is inside the model) and return logits. ``zoattack list
models`` shows the names.
"""

from __future__ import annotations

from zoattack.models.adapters import MissingDependencyError
from zoattack.models.layers import Normalize, NormalizedModel, count_parameters, init_weights_
from zoattack.models.registry import (
    MODELS,
    check_random_init,
    create_model,
    default_pretrained,
    list_models,
)
from zoattack.models.training import TrainRecipe, TrainResult, evaluate, train_model
from zoattack.models.weights import (
    load_card,
    read_card,
    read_state_dict,
    save_weights,
    shipped_weights,
    weights_dir,
)
from zoattack.models.zoo import (
    CifarResNet,
    ResNet20,
    ResNet32,
    ResNet44,
    ResNet56,
    SmallCNN,
    ZooModel,
)

__all__ = [
    "MODELS",
    "CifarResNet",
    "MissingDependencyError",
    "Normalize",
    "NormalizedModel",
    "ResNet20",
    "ResNet32",
    "ResNet44",
    "ResNet56",
    "SmallCNN",
    "TrainRecipe",
    "TrainResult",
    "ZooModel",
    "check_random_init",
    "count_parameters",
    "create_model",
    "default_pretrained",
    "evaluate",
    "init_weights_",
    "list_models",
    "load_card",
    "read_card",
    "read_state_dict",
    "save_weights",
    "shipped_weights",
    "train_model",
    "weights_dir",
]
