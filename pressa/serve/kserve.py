"""The KServe v2 / Open Inference Protocol: server and model metadata, readiness, and `infer` with
JSON tensors or the binary data extension (tensors as raw bytes after the JSON header). A text
generator takes one BYTES input of prompts and answers `text_output`."""

from __future__ import annotations

import asyncio
import json
import math
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from pressa import __version__
from pressa.serve import schemas
from pressa.serve.bodies import TensorJSON, model_named, split_body, to_array
from pressa.serve.models import V2_TYPES, RequestError, TextGenerator
from pressa.serve.openai_api import generation_config
from pressa.serve.schemas import V2InferRequest, V2Tensor, parse

router = APIRouter()


@router.get("/v2")
async def server_metadata():
    return {"name": "pressa", "version": __version__, "extensions": []}


@router.get("/v2/models/{name}")
async def model_metadata(name: str, request: Request):
    m = model_named(request, name)
    return {"name": name, "versions": ["1"], "platform": "onnxruntime",
            "inputs": [t.__dict__ for t in m.inputs], "outputs": [t.__dict__ for t in m.outputs]}


@router.get("/v2/models/{name}/ready")
async def model_ready(name: str, request: Request):
    model_named(request, name)
    return {"name": name, "ready": True}


@router.post("/v2/models/{name}/infer", openapi_extra=schemas.body(V2InferRequest), response_class=TensorJSON)
async def infer(name: str, request: Request):
    m = model_named(request, name)
    data, blob = split_body(await request.body(), request.headers.get("inference-header-content-length"))
    req = parse(V2InferRequest, data)
    feeds, prompts = read_inputs(m, req.inputs, blob)
    if isinstance(m, TextGenerator):
        if prompts is None:
            raise RequestError("a text generator takes one BYTES input of prompts (text_input)")
        texts = await asyncio.to_thread(m.generate_texts, prompts,
                                        generation_config(req.parameters, request.app.state.max_tokens))
        out = {"text_output": np.array(texts, dtype=object)}
    else:
        out = await asyncio.to_thread(m.predict, feeds)
    return write_outputs(req, name, out)


def read_inputs(m, inputs: list[V2Tensor], blob: bytes) -> tuple[dict, list[str] | None]:
    """(feeds, prompts): tensors from JSON data or the binary blob; BYTES are texts, fed through a text
    model's tokenizer or taken as a text generator's prompts."""
    feeds, offset, prompts = {}, 0, None
    for t in inputs:
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise RequestError(f"input {t.name!r}: binary_data_size runs past the request body")
            value, offset = blob[offset:offset + size], offset + size
        elif t.data is not None:
            value = t.data
        else:
            raise RequestError(f"input {t.name!r}: no data")
        if t.datatype == "BYTES":
            texts = strings_of(value) if size is not None else list(np.ravel(np.asarray(value, dtype=object)))
            texts = [x if isinstance(x, str) else str(x) for x in texts]
            if isinstance(m, TextGenerator):
                prompts = texts
            else:
                feeds.update(m.text_feeds(texts))
            continue
        feeds[t.name] = tensor_of(t, value, size is not None)
    return feeds, prompts


def write_outputs(req: V2InferRequest, name: str, out: dict[str, np.ndarray]):
    """The outputs asked for (all when none are named), as JSON data or, where asked, binary."""
    requested = [o for o in req.outputs if o.name in out]
    names = [o.name for o in requested] or list(out)
    binary = {o.name for o in requested if o.parameters.get("binary_data")}
    if not requested and req.parameters.get("binary_data_output"):
        binary = set(names)
    rev = {np.dtype(v): k for k, v in V2_TYPES.items()}
    outputs, chunks = [], []
    for k in names:
        arr = np.ascontiguousarray(out[k])
        o = {"name": k, "shape": list(arr.shape), "datatype": "BYTES" if arr.dtype == object else
             rev.get(arr.dtype, "FP32")}
        if k in binary:
            little = arr.astype(arr.dtype.newbyteorder("<"), copy=False) if arr.dtype != object else None
            raw = bytes_of(arr) if little is None else little.tobytes()
            o["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            o["data"] = arr.ravel().tolist()
        outputs.append(o)
    reply = {"model_name": name, "model_version": "1", "id": str(req.id if req.id is not None else uuid.uuid4()),
             "outputs": outputs}
    if not chunks:
        return reply
    head = json.dumps(reply).encode()
    return Response(head + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def bytes_of(arr: np.ndarray) -> bytes:
    """Strings laid out as the binary extension lays out BYTES: a 4-byte little-endian length, then bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in (str(x).encode() for x in arr.ravel()))


def strings_of(raw: bytes) -> list[str]:
    """BYTES elements as the binary extension lays them out: a 4-byte little-endian length, then bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise RequestError("BYTES tensor: truncated length prefix")
        n = int.from_bytes(raw[i:i + 4], "little")
        out.append(raw[i + 4:i + 4 + n].decode("utf-8", errors="replace"))
        i += 4 + n
    return out


def tensor_of(t: V2Tensor, value, binary: bool) -> np.ndarray:
    dtype = np.dtype(V2_TYPES[t.datatype]).newbyteorder("<")
    if binary:
        if len(value) != math.prod(t.shape) * dtype.itemsize:
            raise RequestError(f"input {t.name!r}: {len(value)} bytes do not hold shape {t.shape} of {t.datatype}")
        return np.frombuffer(value, dtype=dtype).reshape(t.shape).astype(dtype.newbyteorder("="))
    arr = to_array(value, t.name, V2_TYPES[t.datatype])
    if math.prod(t.shape) != arr.size:
        raise RequestError(f"input {t.name!r}: shape {t.shape} does not hold {arr.size} values")
    return arr.reshape(t.shape)
