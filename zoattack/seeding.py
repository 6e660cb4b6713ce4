"""Explicit randomness. Library code only ever draws from a generator it is handed."""

from __future__ import annotations

import torch


def make_generator(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device``: seeded when ``seed`` is given, else from OS entropy.

    Never reads or advances torch's global RNG.
    """
    gen = torch.Generator(device=torch.device(device))
    if seed is None:
        gen.seed()
    else:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        gen.manual_seed(int(seed))
    return gen


def seed_everything(seed: int) -> None:
    """Seed global RNGs for third-party code. Only entry points (the CLI) call this."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
