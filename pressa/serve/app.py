"""The HTTP server: TensorFlow-Serving REST (`/v1/models/{name}:predict`), the KServe v2 / Open
Inference Protocol (`/v2/...`), OpenAI-compatible chat, completions and embeddings (also under `/v3`),
Prometheus `/metrics`. Every error is JSON with a 4xx/5xx status; an optional API key guards all
routes but health."""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pressa import __version__
from pressa.serve import schemas
from pressa.serve.logs import SERVER, event
from pressa.serve.metrics import Stats
from pressa.serve.middleware import CLIENT_GONE, Guard, error_response
from pressa.serve.models import V2_TYPES, Busy, RequestError, ServedModel
from pressa.serve.openai_routes import add_openai_routes, sampling_config


class TensorJSON(JSONResponse):
    """JSON that carries NaN and Infinity as TensorFlow Serving writes them (a model may compute them;
    strict JSON has no spelling for them)."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def create_app(models: dict[str, ServedModel], api_key: str | None = None, max_body: int = 16 << 20,
               max_tokens: int = 2048, body_timeout: float = 30.0, metrics_public: bool = False):
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
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, stats=stats, body_timeout=body_timeout,
                       metrics_public=metrics_public)

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
    except RecursionError:
        raise RequestError("the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    if SURROGATE_ESCAPE.search(raw, 0, cut) and _has_lone_surrogate(data):
        raise RequestError("the body has a string with a lone UTF-16 surrogate (such as \\ud800), which is not "
                           "Unicode text; send valid UTF-8")
    return data, raw[cut:]


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(data) -> bool:
    """Does any string (key or value) hold a lone surrogate? JSON may escape one; UTF-8 cannot carry it."""
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


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
