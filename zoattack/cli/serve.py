"""`zoattack serve`: score images over HTTP. Being built for issue 5."""

from __future__ import annotations


def serve_command() -> None:
    """Serve a model over HTTP (not built yet)."""
    raise NotImplementedError
