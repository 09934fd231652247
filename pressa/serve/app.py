"""The HTTP server: one router per protocol (pressa.serve.tfserving: `/v1/models/{name}:predict`;
pressa.serve.kserve: the KServe v2 / Open Inference Protocol `/v2/...`; pressa.serve.openai_api:
chat, completions and embeddings, also under `/v3`), Prometheus `/metrics`, health. Every error is
JSON with a 4xx/5xx status; an optional API key guards all routes but health (pressa.serve.middleware)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pressa import __version__
from pressa.serve import kserve, openai_api, schemas, tfserving
from pressa.serve.logs import SERVER, event
from pressa.serve.metrics import Stats
from pressa.serve.middleware import CLIENT_GONE, Guard, error_response
from pressa.serve.models import Busy, RequestError, ServedModel, TextGenerator


def create_app(models: dict[str, ServedModel], api_key: str | None = None, max_body: int = 16 << 20,
               max_tokens: int = 2048, body_timeout: float = 30.0, metrics_public: bool = False,
               replica: str | None = None):
    """`replica`: this process's name among Ray Serve's replicas (pressa.serve.ray_serve), in /metrics."""
    stats = Stats(replica)

    @asynccontextmanager
    async def lifespan(app):
        event(SERVER, "ready", models={n: type(m).__name__ for n, m in models.items()})
        yield
        for m in models.values():             # what still waits for a slot ends with an error
            m.close()
        event(SERVER, "stopped", requests=stats.count)

    app = FastAPI(title="pressa", version=__version__, description="pressa model server", lifespan=lifespan)
    app.state.models, app.state.stats, app.state.max_tokens = models, stats, max_tokens
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, stats=stats, body_timeout=body_timeout,
                       metrics_public=metrics_public)

    add_error_handlers(app)

    @app.get("/health")
    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(stats.text(models), media_type="text/plain; version=0.0.4")

    for protocol in (tfserving, kserve, openai_api):
        app.include_router(protocol.router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = schemas.name_models(schemas.add_components(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes)),
                generators=[n for n, m in models.items() if isinstance(m, TextGenerator)],
                tensors=[n for n, m in models.items() if not isinstance(m, TextGenerator)])
        return app.openapi_schema

    app.openapi = openapi
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON in the shape of the route's protocol (middleware.error_response)."""
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request body"
        return error_response(400, message, request.url.path)

    @app.exception_handler(RequestError)
    async def bad_request(request, exc):
        return error_response(exc.status, str(exc), request.url.path)

    @app.exception_handler(Busy)
    async def busy(request, exc):
        return error_response(503, str(exc), request.url.path, {"Retry-After": "1"})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, exc):       # nobody reads this answer; the log notes the departure
        return Response(status_code=CLIENT_GONE)

    @app.exception_handler(Exception)
    async def crash(request, exc):
        SERVER.error("unhandled error", exc_info=exc, extra={"fields": {"path": request.url.path}})
        return error_response(500, "internal error; the server log has the details", request.url.path)
