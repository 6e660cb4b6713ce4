"""Remote black boxes: `zoattack serve` (server), ``remote:URL`` models and third-party APIs.

FastAPI, uvicorn and httpx are imported only when a server or client is built.
"""

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
