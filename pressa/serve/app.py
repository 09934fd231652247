"""The HTTP server: TensorFlow-Serving REST (`/v1/models/{name}:predict`), the KServe v2 / Open
Inference Protocol (`/v2/...`), OpenAI-compatible chat, completions and embeddings (also under `/v3`),
Prometheus `/metrics`. Every error is JSON with a 4xx/5xx status; an optional API key guards all
routes but health."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pressa import __version__
from pressa.serve import schemas
from pressa.serve.logs import ACCESS, SERVER, event
from pressa.serve.models import V2_TYPES, Busy, RequestError, ServedModel
from pressa.serve.openai_routes import add_openai_routes, sampling_config

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/health", "/metrics")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.hist = [0] * (len(BUCKETS) + 1)
        self.total, self.count = 0.0, 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            self.hist[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.total += seconds
            self.count += 1

    def text(self, models: dict[str, ServedModel]) -> str:
        out = ["# TYPE pressa_requests_total counter"]
        out += [f'pressa_requests_total{{route="{r}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())]
        out.append("# TYPE pressa_request_seconds histogram")
        acc = 0
        for b, n in zip((*BUCKETS, "+Inf"), self.hist):
            acc += n
            out.append(f'pressa_request_seconds_bucket{{le="{b}"}} {acc}')
        out += [f"pressa_request_seconds_sum {self.total:.6f}", f"pressa_request_seconds_count {self.count}",
                "# TYPE pressa_queue_depth gauge"]
        out += [f'pressa_queue_depth{{model="{m.name}"}} {m.depth}' for m in models.values()]
        out.append("# TYPE pressa_batch_rows_total counter")
        out += [f'pressa_batch_rows_total{{model="{m.name}"}} {sum(m.batcher.sizes)}' for m in models.values()
                if m.batcher]
        gens = [m for m in models.values() if m.scheduler]
        for metric, kind, attr in (("generated_tokens_total", "counter", "generated"),
                                   ("running_sequences", "gauge", "active"),
                                   ("decode_steps_total", "counter", "steps"),
                                   ("decode_step_rows_total", "counter", "step_rows"),
                                   ("cancelled_sequences_total", "counter", "cancelled")):
            out.append(f"# TYPE pressa_{metric} {kind}")
            out += [f'pressa_{metric}{{model="{m.name}"}} {getattr(m.scheduler, attr)}' for m in gens]
        out.append("# TYPE pressa_time_to_first_token_seconds summary")
        for m in gens:
            out += [f'pressa_time_to_first_token_seconds_sum{{model="{m.name}"}} {m.scheduler.first_token_seconds:.6f}',
                    f'pressa_time_to_first_token_seconds_count{{model="{m.name}"}} {m.scheduler.first_tokens}']
        return "\n".join(out) + "\n"


class Guard:
    """Pure ASGI middleware around every HTTP request: the API key, the body size limit (declared or
    streamed), a request id (the client's X-Request-ID or a new one, echoed back), and, when the last
    byte of the response has gone (the end of a stream included), the metrics and one log line."""

    def __init__(self, app, api_key: str | None, max_body: int, stats: Stats):
        self.app, self.api_key, self.max_body, self.stats = app, api_key, max_body, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = "".join(c for c in headers.get("x-request-id", "")[:64] if c.isalnum() or c in "-_.") or uuid.uuid4().hex
        state = {"status": 500, "done": False, "bytes": 0}

        async def send_logged(msg):
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body") and not state["done"]:
                finish()

        def finish(note: str | None = None):
            state["done"] = True
            took = time.perf_counter() - t0
            self.stats.observe(_route(path), state["status"], took)
            extra = {"note": note} if note else {}
            event(ACCESS, "request", id=rid, method=scope["method"], path=path, status=state["status"],
                  ms=round(took * 1e3, 1), client=(scope.get("client") or ("", 0))[0], **extra)

        async def receive_limited():
            msg = await receive()
            if msg["type"] == "http.request":
                state["bytes"] += len(msg.get("body", b""))
                if state["bytes"] > self.max_body:
                    raise RequestError(f"request body over {self.max_body} bytes", 413)
            return msg

        try:
            if self.api_key and not path.startswith(OPEN_PATHS):
                auth = headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key")
                if not (given and hmac.compare_digest(given.encode(), self.api_key.encode())):
                    return await _json(401, "missing or wrong API key (Authorization: Bearer KEY)", path)(
                        scope, receive, send_logged)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                return await _json(413, f"request body over {self.max_body} bytes", path)(scope, receive, send_logged)
            await self.app(scope, receive_limited, send_logged)
        finally:
            if not state["done"]:
                finish("client went away" if state["status"] < 500 else None)


class TensorJSON(JSONResponse):
    """JSON that carries NaN and Infinity as TensorFlow Serving writes them (a model may compute them;
    strict JSON has no spelling for them)."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


OPENAI_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                      503: "server_busy_error", 500: "server_error"}


def _json(status: int, message: str, path: str, headers: dict | None = None) -> JSONResponse:
    """An error as the route's protocol shapes it: {"error": message} (TensorFlow Serving, KServe v2),
    or OpenAI's {"error": {message, type, param, code}} under its routes (its client reads that)."""
    if path == "/v1/models" or path.startswith(("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v3/")):
        return JSONResponse({"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(
            status, "invalid_request_error"), "param": None, "code": None}}, status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(models: dict[str, ServedModel], api_key: str | None = None, max_body: int = 16 << 20,
               max_tokens: int = 2048):
    stats = Stats()

    @asynccontextmanager
    async def lifespan(app):
        event(SERVER, "ready", models={n: m.kind for n, m in models.items()})
        yield
        for m in models.values():             # what still waits for a slot ends with an error
            if m.scheduler:
                m.scheduler.close()
        event(SERVER, "stopped", requests=stats.count)

    app = FastAPI(title="pressa", version=__version__, description="pressa model server", lifespan=lifespan)
    app.state.models, app.state.stats, app.state.max_tokens = models, stats, max_tokens
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, stats=stats)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return _json(exc.status_code, str(exc.detail), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return _json(400, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request body",
                     request.url.path)

    @app.exception_handler(RequestError)
    async def bad_request(request, exc):
        return _json(exc.status, str(exc), request.url.path)

    @app.exception_handler(Busy)
    async def busy(request, exc):
        return _json(503, str(exc), request.url.path, {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def crash(request, exc):
        SERVER.error("unhandled error", exc_info=exc, extra={"fields": {"path": request.url.path}})
        return _json(500, "internal error; the server log has the details", request.url.path)

    def get_model(name: str) -> ServedModel:
        if name not in models:
            raise RequestError(f"no model named {name!r}; served: {', '.join(models)}", 404)
        return models[name]

    async def body(request: Request) -> dict:
        return _v2_body(await request.body(), None)[0]

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

    # -- TensorFlow-Serving REST -------------------------------------------------------------
    @app.get("/v1/models/{name}")
    async def tf_status(name: str):
        get_model(name)
        return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    @app.get("/v1/models/{name}/metadata")
    async def tf_metadata(name: str):
        m = get_model(name)

        def sig(ts):
            return {t.name: {"name": t.name, "dtype": "DT_" + t.datatype.replace("FP", "FLOAT").replace(
                "FLOAT32", "FLOAT"), "tensor_shape": {"dim": [{"size": str(d)} for d in t.shape]}} for t in ts}
        return {"model_spec": {"name": name, "signature_name": "", "version": "1"},
                "metadata": {"signature_def": {"signature_def": {"serving_default": {
                    "inputs": sig(m.inputs), "outputs": sig(m.outputs),
                    "method_name": "tensorflow/serving/predict"}}}}}

    @app.post("/v1/models/{spec}", openapi_extra=schemas.body(schemas.PredictRequest), response_class=TensorJSON)
    async def tf_predict(spec: str, request: Request):
        name, _, verb = spec.partition(":")
        if verb != "predict":
            raise RequestError(f"unknown verb {verb!r}: use /v1/models/{name}:predict", 404)
        m = get_model(name)
        data = await body(request)
        if m.kind == "llm":                  # prompts in, completions out
            rows = data.get("instances", data.get("inputs"))
            texts = await asyncio.to_thread(m.generate_texts, rows if isinstance(rows, list) else [rows],
                                            sampling_config(_params(data, "the request"), max_tokens))
            return {"predictions": texts} if "instances" in data else {"outputs": texts}
        if "instances" in data:
            rows = data["instances"]
            if not isinstance(rows, list) or not rows:
                raise RequestError("instances must be a non-empty list")
            if all(isinstance(r, str) for r in rows):
                feeds = m.text_feeds(rows)
            elif all(isinstance(r, dict) for r in rows):
                feeds = {k: _array([r.get(k) for r in rows], k) for k in rows[0]}
            elif len(m.inputs) == 1:
                feeds = {m.inputs[0].name: _array(rows, m.inputs[0].name)}
            else:
                raise RequestError("instances must be objects naming each input (the model has several)")
            out = await asyncio.to_thread(m.predict, feeds)
            if len(out) == 1:
                return {"predictions": next(iter(out.values())).tolist()}
            n = len(next(iter(out.values())))
            return {"predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(n)]}
        if "inputs" in data:
            cols = data["inputs"]
            if isinstance(cols, list) and all(isinstance(t, str) for t in cols):
                feeds = m.text_feeds(cols)
            elif isinstance(cols, dict):
                feeds = {k: _array(v, k) for k, v in cols.items()}
            elif len(m.inputs) == 1:
                feeds = {m.inputs[0].name: _array(cols, m.inputs[0].name)}
            else:
                raise RequestError("inputs must be an object naming each input")
            out = await asyncio.to_thread(m.predict, feeds)
            return {"outputs": next(iter(out.values())).tolist() if len(out) == 1 else
                    {k: v.tolist() for k, v in out.items()}}
        raise RequestError("give 'instances' (row format) or 'inputs' (columnar format)")

    # -- KServe v2 / Open Inference Protocol -----------------------------------------------------
    @app.get("/v2")
    async def v2_server():
        return {"name": "pressa", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}")
    async def v2_model(name: str):
        m = get_model(name)
        return {"name": name, "versions": ["1"], "platform": "onnxruntime",
                "inputs": [t.__dict__ for t in m.inputs], "outputs": [t.__dict__ for t in m.outputs]}

    @app.get("/v2/models/{name}/ready")
    async def v2_ready(name: str):
        get_model(name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", openapi_extra=schemas.body(schemas.V2InferRequest),
              response_class=TensorJSON)
    async def v2_infer(name: str, request: Request):
        m = get_model(name)
        data, blob = _v2_body(await request.body(), request.headers.get("inference-header-content-length"))
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestError("inputs must be a non-empty list of tensors {name, shape, datatype, data}")
        feeds, offset, prompts = {}, 0, None
        for t in inputs:
            if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= set(t):
                raise RequestError("each input needs name, shape, datatype and data (or binary data)")
            if not isinstance(t["name"], str) or not isinstance(t["datatype"], str):
                raise RequestError("an input's name and datatype must be strings")
            size = _params(t, f"input {t['name']!r}").get("binary_data_size")
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                    raise RequestError(f"input {t['name']!r}: binary_data_size runs past the request body")
                value, offset = blob[offset:offset + size], offset + size
            elif "data" in t:
                value = t["data"]
            else:
                raise RequestError(f"input {t['name']!r}: no data")
            if t["datatype"] == "BYTES":
                texts = _v2_strings(value) if size is not None else list(np.ravel(np.asarray(value, dtype=object)))
                texts = [x if isinstance(x, str) else str(x) for x in texts]
                if m.kind == "llm":
                    prompts = texts
                else:
                    feeds.update(m.text_feeds(texts))
                continue
            feeds[t["name"]] = _v2_tensor(t, value, size is not None)
        if m.kind == "llm":
            if prompts is None:
                raise RequestError("a text generator takes one BYTES input of prompts (text_input)")
            cfg = sampling_config(_params(data, "the request"), max_tokens)
            texts = await asyncio.to_thread(m.generate_texts, prompts, cfg)
            out = {"text_output": np.array(texts, dtype=object)}
        else:
            out = await asyncio.to_thread(m.predict, feeds)
        asked = data.get("outputs") or []
        if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                  for o in asked):
            raise RequestError("outputs must be a list of {name, parameters}")
        requested = [o for o in asked if o["name"] in out]
        names = [o["name"] for o in requested] or list(out)
        binary = {o["name"] for o in requested if _params(o, f"output {o['name']!r}").get("binary_data")}
        if not requested and _params(data, "the request").get("binary_data_output"):
            binary = set(names)
        rev = {np.dtype(v): k for k, v in V2_TYPES.items()}
        outputs, chunks = [], []
        for k in names:
            arr = np.ascontiguousarray(out[k])
            o = {"name": k, "shape": list(arr.shape), "datatype": "BYTES" if arr.dtype == object else
                 rev.get(arr.dtype, "FP32")}
            if k in binary:
                raw = _v2_bytes(arr) if arr.dtype == object else arr.astype(arr.dtype.newbyteorder("<"),
                                                                              copy=False).tobytes()
                o["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                o["data"] = arr.ravel().tolist()
            outputs.append(o)
        reply = {"model_name": name, "model_version": "1", "id": str(data.get("id", uuid.uuid4())),
                 "outputs": outputs}
        if not chunks:
            return reply
        head = json.dumps(reply).encode()
        return Response(head + b"".join(chunks), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})

    add_openai_routes(app, models, get_model, body)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = schemas.name_models(schemas.add_components(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes)),
                generators=[n for n, m in models.items() if m.kind == "llm"],
                tensors=[n for n, m in models.items() if m.kind != "llm"])
        return app.openapi_schema

    app.openapi = openapi
    return app


def _route(path: str) -> str:
    parts = path.strip("/").split("/")
    return "/" + "/".join(parts[:2]) if parts and parts[0] in ("v1", "v2", "v3") else path


def _array(value, name: str, dtype=None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"input {name!r}: not a rectangular array of numbers in range") from None
    if arr.dtype == object or arr.dtype.kind in "USO":
        raise RequestError(f"input {name!r}: not a rectangular array of numbers")
    return arr


def _params(obj: dict, what: str) -> dict:
    """An object's `parameters` (KServe v2): a JSON object, or absent."""
    p = obj.get("parameters")
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise RequestError(f"{what}: parameters must be an object")
    return p


def _v2_body(raw: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part of a v2 request and the binary tensors after it (the binary data extension)."""
    cut = len(raw)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise RequestError("Inference-Header-Content-Length is not a length within the body")
        cut = int(header_length)
    try:
        data = json.loads(raw[:cut] or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    return data, raw[cut:]


def _v2_bytes(arr: np.ndarray) -> bytes:
    """Strings laid out as the binary extension lays out BYTES: a 4-byte little-endian length, then bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in (str(x).encode() for x in arr.ravel()))


def _v2_strings(raw: bytes) -> list[str]:
    """BYTES elements as the binary extension lays them out: a 4-byte little-endian length, then bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise RequestError("BYTES tensor: truncated length prefix")
        n = int.from_bytes(raw[i:i + 4], "little")
        out.append(raw[i + 4:i + 4 + n].decode("utf-8", errors="replace"))
        i += 4 + n
    return out


def _v2_tensor(t: dict, value, binary: bool) -> np.ndarray:
    if t["datatype"] not in V2_TYPES:
        raise RequestError(f"input {t['name']!r}: datatype {t['datatype']!r} is not one of "
                           f"{', '.join(V2_TYPES)}, BYTES")
    dtype = np.dtype(V2_TYPES[t["datatype"]]).newbyteorder("<")
    shape = t["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(f"input {t['name']!r}: shape must be a list of non-negative integers")
    if binary:
        if len(value) != math.prod(shape) * dtype.itemsize:
            raise RequestError(f"input {t['name']!r}: {len(value)} bytes do not hold shape {shape} of {t['datatype']}")
        return np.frombuffer(value, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    arr = _array(value, t["name"], V2_TYPES[t["datatype"]])
    if math.prod(shape) != arr.size:
        raise RequestError(f"input {t['name']!r}: shape {shape} does not hold {arr.size} values")
    return arr.reshape(shape)
