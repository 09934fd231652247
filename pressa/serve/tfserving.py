"""The TensorFlow-Serving REST protocol: model status, metadata and `:predict` (row `instances` or
columnar `inputs`; strings go through a text model's tokenizer, or are prompts to a text generator)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from pressa.serve import schemas
from pressa.serve.bodies import TensorJSON, json_body, model_named, to_array
from pressa.serve.models import RequestError, TensorModel, TextGenerator
from pressa.serve.openai_api import generation_config
from pressa.serve.schemas import PredictRequest, parse

router = APIRouter()


@router.get("/v1/models/{name}")
async def status(name: str, request: Request):
    model_named(request, name)
    return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


@router.get("/v1/models/{name}/metadata")
async def metadata(name: str, request: Request):
    m = model_named(request, name)

    def sig(ts):
        return {t.name: {"name": t.name, "dtype": "DT_" + t.datatype.replace("FP", "FLOAT").replace(
            "FLOAT32", "FLOAT"), "tensor_shape": {"dim": [{"size": str(d)} for d in t.shape]}} for t in ts}
    return {"model_spec": {"name": name, "signature_name": "", "version": "1"},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": sig(m.inputs), "outputs": sig(m.outputs), "method_name": "tensorflow/serving/predict"}}}}}


@router.post("/v1/models/{spec}", openapi_extra=schemas.body(PredictRequest), response_class=TensorJSON)
async def predict(spec: str, request: Request):
    name, _, verb = spec.partition(":")
    if verb != "predict":
        raise RequestError(f"unknown verb {verb!r}: use /v1/models/{name}:predict", 404)
    m = model_named(request, name)
    req = parse(PredictRequest, await json_body(request))
    rows = req.instances if req.instances is not None else req.inputs
    if isinstance(m, TextGenerator):                  # prompts in, completions out
        cfg = generation_config(req.parameters or {}, request.app.state.max_tokens)
        texts = await asyncio.to_thread(m.generate_texts, rows if isinstance(rows, list) else [rows], cfg)
        return {"predictions": texts} if req.instances is not None else {"outputs": texts}
    if req.instances is not None:
        out = await asyncio.to_thread(m.predict, row_feeds(m, req.instances))
        if len(out) == 1:
            return {"predictions": next(iter(out.values())).tolist()}
        n = len(next(iter(out.values())))
        return {"predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(n)]}
    out = await asyncio.to_thread(m.predict, column_feeds(m, req.inputs))
    return {"outputs": next(iter(out.values())).tolist() if len(out) == 1 else {k: v.tolist() for k, v in out.items()}}


def row_feeds(m: TensorModel, rows: list) -> dict:
    if all(isinstance(r, str) for r in rows):
        return m.text_feeds(rows)
    if all(isinstance(r, dict) for r in rows):
        return {k: to_array([r.get(k) for r in rows], k) for k in rows[0]}
    if len(m.inputs) == 1:
        return {m.inputs[0].name: to_array(rows, m.inputs[0].name)}
    raise RequestError("instances must be objects naming each input (the model has several)")


def column_feeds(m: TensorModel, cols) -> dict:
    if isinstance(cols, list) and all(isinstance(t, str) for t in cols):
        return m.text_feeds(cols)
    if isinstance(cols, dict):
        return {k: to_array(v, k) for k, v in cols.items()}
    if len(m.inputs) == 1:
        return {m.inputs[0].name: to_array(cols, m.inputs[0].name)}
    raise RequestError("inputs must be an object naming each input")
