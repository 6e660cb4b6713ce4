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
from zoattack.defense.train import METHODS, DefenseConfig, DefenseFront, train_defense

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
