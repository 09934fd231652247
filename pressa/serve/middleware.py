"""What every HTTP request goes through before and after its route: the API key, limits on the body
(size, and how long it may take to arrive), a request id, errors shaped as each protocol shapes them,
and one log line plus the metrics when the last byte has gone (a client that went away is noted, not
counted as a server error). Also the HTTP protocol with a time limit on request headers."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid

from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from pressa.serve.logs import ACCESS, event
from pressa.serve.metrics import Stats
from pressa.serve.models import RequestError

HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready", "/health")
CLIENT_GONE = 499               # nginx's status for a client that closed the connection before the answer
OPENAI_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 408: "timeout_error",
                      429: "rate_limit_error", 503: "server_busy_error", 500: "server_error"}


def error_response(status: int, message: str, path: str, headers: dict | None = None) -> JSONResponse:
    """An error as the route's protocol shapes it: {"error": message} (TensorFlow Serving, KServe v2),
    or OpenAI's {"error": {message, type, param, code}} under its routes (its client reads that)."""
    if status == 408:
        headers = {**(headers or {}), "Connection": "close"}      # the rest of the body will not be read
    if path == "/v1/models" or path.startswith(("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v3/")):
        return JSONResponse({"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(
            status, "invalid_request_error"), "param": None, "code": None}}, status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def route_label(path: str) -> str:
    parts = path.strip("/").split("/")
    return "/" + "/".join(parts[:2]) if parts and parts[0] in ("v1", "v2", "v3") else path


class Guard:
    """Pure ASGI middleware around every HTTP request: the API key (every route but health, and
    /metrics too unless `metrics_public`), the body size limit (declared or streamed), the body's
    arrival time limit (408), a request id (the client's X-Request-ID or a new one, echoed back), and,
    when the last byte of the response has gone (the end of a stream included), the metrics and one
    log line."""

    def __init__(self, app, api_key: str | None, max_body: int, stats: Stats, body_timeout: float = 30.0,
                 metrics_public: bool = False):
        self.app, self.api_key, self.max_body, self.stats = app, api_key, max_body, stats
        self.body_timeout = body_timeout
        self.open_paths = HEALTH_PATHS + (("/metrics",) if metrics_public else ())

    def refusal(self, path: str, headers: dict[str, str]):
        """The answer to a request refused before it is read (a missing or wrong key, a declared body
        over the limit), or None."""
        if self.api_key and not path.startswith(self.open_paths):
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key")
            if not (given and hmac.compare_digest(given.encode(), self.api_key.encode())):
                return error_response(401, "missing or wrong API key (Authorization: Bearer KEY)", path)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return error_response(413, f"request body over {self.max_body} bytes", path)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = "".join(c for c in headers.get("x-request-id", "")[:64] if c.isalnum() or c in "-_.") or uuid.uuid4().hex
        state = {"status": None, "done": False, "bytes": 0, "body_done": False, "gone": False}

        async def send_logged(msg):
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body") and not state["done"]:
                finish()

        def finish(note: str | None = None, status: int | None = None):
            state["done"] = True
            took = time.perf_counter() - t0
            status = status or state["status"] or CLIENT_GONE
            if status == CLIENT_GONE:
                note = "client went away"
            self.stats.observe(route_label(path), status, took)
            extra = {"note": note} if note else {}
            event(ACCESS, "request", id=rid, method=scope["method"], path=path, status=status,
                  ms=round(took * 1e3, 1), client=(scope.get("client") or ("", 0))[0], **extra)

        async def receive_limited():
            if state["body_done"]:
                msg = await receive()                # after the body: only a disconnect can come
            else:
                try:
                    msg = await asyncio.wait_for(receive(), self.body_timeout)
                except TimeoutError:
                    raise RequestError(f"the request body did not arrive within {self.body_timeout:g} s", 408) from None
            if msg["type"] == "http.disconnect":
                state["gone"] = True
            elif msg["type"] == "http.request":
                state["bytes"] += len(msg.get("body", b""))
                state["body_done"] = not msg.get("more_body", False)
                if state["bytes"] > self.max_body:
                    raise RequestError(f"request body over {self.max_body} bytes", 413)
            return msg

        try:
            refused = self.refusal(path, headers)
            if refused is not None:
                return await refused(scope, receive, send_logged)
            await self.app(scope, receive_limited, send_logged)
        except Exception:
            if not state["done"]:            # the server's own fault: answered 500 further out
                finish(status=state["status"] or 500)
            raise
        finally:
            if not state["done"]:            # the client left before the answer ended
                finish("client went away")


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request line and headers take longer than
    `seconds` to arrive (a slow-headers client would otherwise hold it open forever)."""

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11
