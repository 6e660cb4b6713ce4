"""Remote black boxes: `zoattack serve` (server), ``remote:URL`` models and third-party APIs.

FastAPI, uvicorn and httpx are imported only when a server or client is built.
"""

from zoattack.models.registry import MODELS
from zoattack.registry import Entry
from zoattack.remote.client import (
    HTTPScoreModel,
    MalformedReply,
    RemoteError,
    RemoteModel,
    RemoteScoresError,
    ScoreAPI,
    remote_model,
)
from zoattack.remote.server import BackgroundServer, create_app, model_server_app

__all__ = [
    "BackgroundServer",
    "HTTPScoreModel",
    "MalformedReply",
    "RemoteError",
    "RemoteModel",
    "RemoteScoresError",
    "ScoreAPI",
    "create_app",
    "model_server_app",
    "remote_model",
]


# The model registry knows nothing of HTTP: this plug-in adds its prefix to it.
MODELS.add(
    Entry(
        "remote",
        remote_model,
        "remote:http://HOST:PORT, a model served by `zoattack serve` (or a compatible "
        "score API), queried over HTTP with retries; counts match the server's",
        {"adapter": True, "remote": True},
    )
)
