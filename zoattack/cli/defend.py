"""`zoattack defend`: ZO-AE-DS black-box defense (train, certify). Being built for issue 4."""

from __future__ import annotations

import typer

app = typer.Typer(help="ZO-AE-DS black-box defense: train a denoiser+autoencoder with ZO "
                  "gradients, certify by randomized smoothing.", no_args_is_help=True)
