"""Black-box defense: ZO-AE-DS (Zhang et al., ICLR 2022) and randomized-smoothing certification.

* :mod:`~zoattack.defense.denoiser` DnCNN; :mod:`~zoattack.defense.autoencoder` encoder/decoder;
* :mod:`~zoattack.defense.bridge` the autograd bridge (ZO estimate of d loss / d latent);
* :mod:`~zoattack.defense.train` ``train_defense`` (methods fo-ds, fo-ae-ds, zo-ds, zo-ae-ds);
* :mod:`~zoattack.defense.certify` Cohen et al.'s PREDICT / CERTIFY;
* :mod:`~zoattack.defense.model` ``defended_model`` (``create_model("defended:PATH")``).
"""

from __future__ import annotations

from zoattack.defense.autoencoder import Decoder, Encoder, make_autoencoder
from zoattack.defense.bridge import PseudoLabelCE, zo_loss
from zoattack.defense.certify import Smooth, blackbox_classifier, certified_accuracy
from zoattack.defense.denoiser import DnCNN
from zoattack.defense.model import defended_model
from zoattack.defense.train import METHODS, DefenseConfig, DefenseFront, train_defense
from zoattack.models.registry import MODELS
from zoattack.registry import Entry

__all__ = [
    "METHODS",
    "Decoder",
    "DefenseConfig",
    "DefenseFront",
    "DnCNN",
    "Encoder",
    "PseudoLabelCE",
    "Smooth",
    "blackbox_classifier",
    "certified_accuracy",
    "make_autoencoder",
    "train_defense",
    "zo_loss",
]


# The model registry knows nothing of defenses: this plug-in adds its prefix to it.
MODELS.add(
    Entry(
        "defended",
        defended_model,
        "defended:PATH, a ZO-AE-DS defense written by `zoattack defend train` in front "
        "of its black box (plain or smoothed classifier)",
        {"adapter": True, "defended": True},
    )
)
