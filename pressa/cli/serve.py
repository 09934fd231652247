"""`pressa serve`: artifacts over HTTP (TensorFlow-Serving REST, KServe v2, OpenAI)."""

from __future__ import annotations

from pathlib import Path

import typer

from pressa import log
from pressa.cli.app import app, runtime_flags
from pressa.cli.options import validated, with_config_options
from pressa.serve.models import ServingLimits


@app.command()
@runtime_flags
@with_config_options(ServingLimits, into="limits")
def serve(
    model_name: str | None = typer.Option(None, "--model_name", "--model-name", help="Name clients use."),
    model_path: Path | None = typer.Option(None, "--model_path", "--model-path", help="Artifact folder to serve."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON: models: [{name, path, max_concurrency, "
                                       "max_queue, max_batch, max_wait_ms, context}] to serve several."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(9000, "--port", min=1, max=65535, help="Port (OpenVINO Model Server's REST default)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="PRESSA_API_KEY",
                                       help="Require this key (Authorization: Bearer) on every route but health "
                                       "(/metrics too, unless --metrics-public)."),
    max_tokens: int = typer.Option(2048, "--max-tokens", min=1, help="Largest max_tokens a request may ask."),
    max_body: int = typer.Option(16 << 20, "--max-body", min=1024, help="Largest request body in bytes."),
    log_format: str = typer.Option("json", "--log-format", help="Server logs on stderr: json (one object per "
                                   "line) or text."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log a line per request."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", min=0.0, help="On SIGTERM/Ctrl-C, seconds "
                                           "to let in-flight requests finish before closing them."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", min=0.1, help="Seconds a request body may take to "
                                       "arrive (then 408 and the connection closes)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, help="Seconds a connection may take to "
                                         "send a request's line and headers (then it is closed)."),
    metrics_public: bool = typer.Option(False, "--metrics-public", help="Answer /metrics without the API key "
                                        "(for a Prometheus scraper that sends none)."),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray (a Ray Serve "
                                 "deployment: --replicas copies behind Ray's proxy)."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="With --executor ray: replicas, each with its "
                                 "own copy of the models."),
    autoscale: str | None = typer.Option(None, "--autoscale", help="With --executor ray: MIN:MAX replicas, "
                                         "scaled by Ray Serve on ongoing requests (instead of --replicas)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --executor ray: an existing "
                                           "cluster (ray://head:10001); without, a local Ray for this server."),
    runtime=None,
    limits: dict | None = None,
):
    """Serve artifacts over HTTP: TensorFlow-Serving REST, KServe v2, OpenAI-compatible chat/completions/embeddings.

    The runtime flags and the per-model limits (--max-concurrency, --max-queue, --max-batch, --max-wait-ms,
    --context) are the defaults of every models.yaml entry, which may set its own."""
    from pressa.errors import BadArgument
    from pressa.serve.app import create_app
    from pressa.serve.models import load_models, model_entries

    defaults = {**runtime.model_dump(), **validated(ServingLimits, limits).model_dump()}
    if config is not None:
        entries = _serve_config(config, defaults)
    elif model_name and model_path:
        entries = model_entries([{"name": model_name, "path": str(model_path)}], defaults, "--model_name/--model_path")
    else:
        raise BadArgument("give --model_name and --model_path, or --config models.yaml")
    if log_format not in ("json", "text"):
        raise BadArgument(f"--log-format {log_format!r}: use json or text")
    _check_port_free(host, port)
    app_options = {"api_key": api_key, "max_body": max_body, "max_tokens": max_tokens, "body_timeout": body_timeout,
                   "metrics_public": metrics_public}
    from pressa.engine.executors import check_executor

    check_executor(executor)
    if executor == "ray":
        _serve_on_ray(entries, app_options, host, port, replicas, autoscale, ray_address, shutdown_timeout)
        return
    if replicas > 1 or autoscale or ray_address:
        raise BadArgument("--replicas, --autoscale and --ray-address apply to --executor ray")
    with log.status("loading models"):
        models = load_models(entries)
    _run_server(create_app(models, **app_options), host, port, log_format, access_log, header_timeout,
                shutdown_timeout)


def _serve_on_ray(entries, app_options: dict, host: str, port: int, replicas: int, autoscale: str | None,
                  address: str | None, shutdown_timeout: float) -> None:
    from pressa.serve.ray_serve import parse_autoscale, serve_on_ray

    cpus = max(1.0, float(getattr(entries[0], "threads", None) or 1))
    entries = [e.model_copy(update={"path": Path(e.path).absolute()}) for e in entries]   # as every node sees
    serve_on_ray(entries, app_options, host, port, replicas, parse_autoscale(autoscale), address, cpus,
                 shutdown_timeout, log.info)


def _run_server(app_, host: str, port: int, log_format: str, access_log: bool, header_timeout: float,
                shutdown_timeout: float) -> None:
    import signal

    import uvicorn

    from pressa.serve.logs import log_config
    from pressa.serve.middleware import header_timeout_protocol

    cfg = log_config(log_format)
    if not access_log:
        cfg["loggers"]["pressa.access"]["level"] = "WARNING"
    # uvicorn handles SIGINT/SIGTERM itself (stop accepting, finish in-flight requests, shut down), then
    # raises the signal again for the handler it found: a stop that went as planned exits 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    uvicorn.run(app_, host=host, port=port, log_config=cfg, access_log=False, http=header_timeout_protocol(
        header_timeout), timeout_graceful_shutdown=shutdown_timeout)


def _serve_config(path: Path, defaults: dict) -> list:
    """models.yaml / .json: {models: [{name, path, ...}]}, relative paths beside the file."""
    from pressa.engine.config import read_config
    from pressa.errors import BadArgument
    from pressa.serve.models import model_entries

    data = read_config(path)
    unknown = [k for k in data if k != "models"]
    if unknown:
        raise BadArgument(f"{path}: unknown key {unknown[0]!r}; the file holds models: [{{name, path, ...}}]")
    entries = data.get("models")
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("path"), str) and not Path(e["path"]).is_absolute():
            e["path"] = str(path.parent / e["path"])
    return model_entries(entries, defaults, f"{path}: models")


def _check_port_free(host: str, port: int) -> None:
    """A port already taken is one line before the models load, not a log stream after."""
    import socket

    from pressa.errors import BadArgument

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise BadArgument(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as err:
            raise BadArgument(f"cannot listen on {host}:{port} ({err.strerror}); is another server using it? "
                              "choose another --port") from None


def _stopped(signum, frame):
    raise SystemExit(0)
