"""What every protocol's routes share: the request body read as JSON (lone surrogates and deep
nesting refused), arrays from JSON values, and JSON that carries NaN and Infinity."""

from __future__ import annotations

import json
import re

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from pressa.serve.models import RequestError, ServedModel, served

SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class TensorJSON(JSONResponse):
    """JSON that carries NaN and Infinity as TensorFlow Serving writes them (a model may compute them;
    strict JSON has no spelling for them)."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def split_body(raw: bytes, header_length: str | None = None) -> tuple[dict, bytes]:
    """The JSON part of a request and what follows it (KServe's binary data extension: the JSON is
    `Inference-Header-Content-Length` bytes long, binary tensors after it)."""
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
    if SURROGATE_ESCAPE.search(raw, 0, cut) and has_lone_surrogate(data):
        raise RequestError("the body has a string with a lone UTF-16 surrogate (such as \\ud800), which is not "
                           "Unicode text; send valid UTF-8")
    return data, raw[cut:]


async def json_body(request: Request) -> dict:
    return split_body(await request.body())[0]


def has_lone_surrogate(data) -> bool:
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


def to_array(value, name: str, dtype=None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"input {name!r}: not a rectangular array of numbers in range") from None
    if arr.dtype == object or arr.dtype.kind in "USO":
        raise RequestError(f"input {name!r}: not a rectangular array of numbers")
    return arr


def model_named(request: Request, name: str, want: type[ServedModel] = ServedModel, use: str = "") -> ServedModel:
    return served(request.app.state.models, name, want, use)
