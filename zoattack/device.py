"""Device names as users type them (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when visible, else CPU; ``cuda`` without a GPU is the user's error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)
