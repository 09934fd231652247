"""Request bodies as the OpenAPI document (`/openapi.json`) describes them, for clients, code
generators and the fuzz test. The routes parse bodies themselves (the KServe binary extension is
not JSON, and each protocol words its own errors), so these models document; they do not validate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

V2Datatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    model: str = Field(description="A served model's name (GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1, description="New tokens at most; the server's --max-tokens caps it.")
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name of max_tokens.")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 picks the most likely token.")
    top_p: float | None = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, description="Text that ends a choice (not included).")
    seed: int | None = Field(None, description="Choice i samples with seed + i.")
    n: int | None = Field(1, ge=1, le=8, description="Choices to generate.")
    stream: bool | None = Field(False, description="Server-sent events, ending with data: [DONE].")
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = Field(False, description="Generate max_tokens even past an end-of-sequence token.")
    top_k: int | None = Field(0, ge=-1, description="Sample among the k most likely tokens (0 or -1: off).")
    repetition_penalty: float | None = Field(1.0, gt=0, le=10, description="Above 1 discourages repeating tokens.")


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(False, description="Each generated token's log-probability.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: the most likely alternatives.")


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5, description="Log-probabilities of each token and this many "
                                 "alternatives.")


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = Field(None, description="base64: float32 little-endian.")


class PredictRequest(BaseModel):
    """TensorFlow-Serving predict: `instances` (rows) or `inputs` (columns); strings for text models.
    A text generator takes prompt strings and answers their completions."""
    instances: list[Any] | None = None
    inputs: dict[str, Any] | list[Any] | None = None
    parameters: dict[str, Any] | None = Field(None, description="Text generators: max_tokens, temperature, "
                                              "top_p, seed, stop, ignore_eos.")


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: V2Datatype
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2Output(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """KServe v2 inference request (JSON; with `Inference-Header-Content-Length` binary tensors follow it)."""
    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2Output] | None = None
    parameters: dict[str, Any] | None = None


MODELS = (ChatRequest, CompletionRequest, EmbeddingRequest, PredictRequest, V2InferRequest)


def body(model: type[BaseModel]) -> dict:
    """A route's `openapi_extra`: its request body, by reference to the components `add_components` adds."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def add_components(spec: dict) -> dict:
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    return spec


def name_models(spec: dict, generators: list[str], tensors: list[str]) -> dict:
    """Name the served models where the document takes one: `model` in OpenAI bodies (text generators
    for chat and completions, tensor models for embeddings) and the `name`/`spec` path parameters."""
    comps = spec["components"]["schemas"]
    for body, names in (("ChatRequest", generators), ("CompletionRequest", generators),
                        ("EmbeddingRequest", tensors)):
        if names:
            comps[body]["properties"]["model"]["enum"] = names
    everyone = generators + tensors
    for ops in spec["paths"].values():
        for op in ops.values():
            for p in op.get("parameters", []):
                if p.get("in") == "path" and p["name"] == "name" and everyone:
                    p["schema"]["enum"] = everyone
                elif p.get("in") == "path" and p["name"] == "spec" and everyone:
                    p["schema"]["enum"] = [f"{n}:predict" for n in everyone]
    return spec
