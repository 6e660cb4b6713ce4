"""`zoattack serve`: score images over HTTP, for `zoattack run --model remote:http://HOST:PORT`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from zoattack.cli._common import (
    P_HTTP,
    P_MODEL,
    DataDirOption,
    ModelDirOption,
    WeightsOption,
    err,
    guarded,
    resolve_device,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@guarded
def serve_command(
    model: Annotated[
        str,
        typer.Option(
            help="Zoo name (resnet20, small_cnn) or "
            "torchvision:/timm:/robustbench:NAME, built as "
            "`zoattack run` builds it.",
            rich_help_panel=P_MODEL,
        ),
    ] = "small_cnn",
    dataset: Annotated[
        str,
        typer.Option(
            help="Data set the model is for (input shape, classes, statistics, shipped weights).",
            rich_help_panel=P_MODEL,
        ),
    ] = "fashion-mnist",
    data_dir: DataDirOption = None,
    weights: WeightsOption = None,
    model_dir: ModelDirOption = None,
    output: Annotated[
        str,
        typer.Option(help="What clients get: logits, probs or labels.", rich_help_panel=P_MODEL),
    ] = "logits",
    device: Annotated[
        str, typer.Option(help="auto, cpu or cuda.", rich_help_panel=P_MODEL)
    ] = "auto",
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind; loopback unless you mean to expose the model.",
            rich_help_panel=P_HTTP,
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", rich_help_panel=P_HTTP)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer TOKEN' (default: $ZOATTACK_TOKEN, else no auth).",
            rich_help_panel=P_HTTP,
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            help="Most inputs per request (clients split larger calls).", rich_help_panel=P_HTTP
        ),
    ] = 4096,
    max_bytes: Annotated[
        int, typer.Option(help="Largest request body in bytes (413 above).", rich_help_panel=P_HTTP)
    ] = 64 * 2**20,
    max_inflight: Annotated[
        int,
        typer.Option(
            help="Whole bodies decoded and scored at once; bodies held at once stay within "
            "this times --max-bytes (others wait unread).",
            rich_help_panel=P_HTTP,
        ),
    ] = 4,
    body_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a client has to send a whole request body (408 and closed after).",
            rich_help_panel=P_HTTP,
        ),
    ] = 30.0,
    log_level: Annotated[
        str, typer.Option(help="uvicorn log level.", rich_help_panel=P_HTTP)
    ] = "warning",
) -> None:
    """Serve a model over HTTP: POST /score, GET /health, /info, /stats, docs at /docs.

    With --token, /openapi.json needs the token and /docs, /redoc are off.
    """
    from zoattack.remote.server import OUTPUTS, bind_socket, model_server_app

    if output not in OUTPUTS:
        raise ValueError(f"--output must be logits, probs or labels, got {output!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {port}")
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    if max_bytes < 1024:
        raise ValueError(f"--max-bytes must be >= 1024, got {max_bytes}")
    if max_inflight < 1:
        raise ValueError(f"--max-inflight must be >= 1, got {max_inflight}")
    if not 0 < body_timeout < float("inf"):
        raise ValueError(f"--body-timeout must be a positive number of seconds, got {body_timeout}")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ValueError(
            f"--log-level must be critical, error, warning, info or debug, got {log_level!r}"
        )
    token = token if token is not None else (os.environ.get("ZOATTACK_TOKEN") or None)
    dev = resolve_device(device)
    # Bind before loading the model: a busy port fails in a second, not after the weights load.
    sock = bind_socket(host, port)
    try:
        app = model_server_app(
            model,
            dataset,
            weights=weights,
            model_dir=model_dir,
            data_dir=data_dir,
            device=dev,
            output=output,
            token=token,
            max_batch=max_batch,
            max_bytes=max_bytes,
            max_inflight=max_inflight,
            body_timeout=body_timeout,
        )
    except BaseException:
        sock.close()
        raise
    import uvicorn

    bound_port = sock.getsockname()[1]
    info = app.state.info
    shape = "x".join(str(s) for s in info.get("input_shape", []))
    err.print(
        f"serving {model} ({dataset}, {shape} -> {info.get('num_classes')} {output}) on "
        f"http://{host}:{bound_port} ("
        f"{'token required; /openapi.json behind it' if token else 'no token; docs at /docs'}"
        "); Ctrl-C to stop",
        highlight=False,
        soft_wrap=True,
    )
    if host not in LOOPBACK and token is None:
        err.print(
            "[bold yellow]warning:[/] listening beyond this machine without --token: "
            "anyone who can reach it can query the model",
            highlight=False,
        )
    config = uvicorn.Config(app, log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
