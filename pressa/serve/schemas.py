"""Request bodies: the one validation of every protocol's JSON, and what the OpenAPI document
(`/openapi.json`) shows clients, code generators and the fuzz test. `parse` turns the first problem
into one sentence naming the field. What depends on the model or the server's limits (a tensor's
shape against the model's, max_tokens against --max-tokens) is checked where those are known."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pressa.serve.models import RequestError

V2Datatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]

# fields of OpenAI's requests this server does not implement: refused when they ask for something
UNSUPPORTED = {"echo": (False, None), "best_of": (1, None), "suffix": (None, ""), "logit_bias": (None, {}),
               "functions": (None, [])}


class Body(BaseModel):
    """Strict JSON types (true is no number, 2.5 no integer); a null field takes its default, as
    OpenAI's clients send unset fields; unknown fields are ignored."""
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_unset(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class FunctionCall(Body):
    name: str = Field(min_length=1)
    arguments: str = Field(description="JSON text.")


class MessageToolCall(Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[MessageToolCall] = Field([], description="An assistant turn's calls (sent back with results).")
    tool_call_id: str = Field("", description="A tool turn: the call whose result `content` is.")

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v):            # [{"type": "text", "text": ...}, ...] as one string
        if isinstance(v, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in v):
                raise ValueError("only text parts are supported: [{\"type\": \"text\", \"text\": ...}]")
            return "".join(p["text"] for p in v)
        return v

    def template_dict(self) -> dict:
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                                              "arguments": c.function.arguments}}
                                 for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionSpec(Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    parameters: dict = Field({"type": "object", "properties": {}}, description="A JSON schema of the arguments.")
    strict: bool = True


class ToolSpec(Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedToolChoice(Body):
    type: Literal["function"] = "function"
    function: dict = Field(description='{"name": ...}')


class StreamOptions(Body):
    include_usage: bool = False


class GenerationParams(Body):
    """Sampling settings; also the `parameters` of a predict or infer request to a text generator."""
    max_tokens: int | None = Field(None, ge=1, description="New tokens at most; the server's --max-tokens caps it.")
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name of max_tokens.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 picks the most likely token.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=1 << 31, description="Sample among the k most likely tokens (0 or -1: off).")
    repetition_penalty: float = Field(1.0, ge=0.01, le=10, description="Above 1 discourages repeating tokens "
                                      "(0.01 to 10, as --repetition-penalty).")
    stop: str | list[str] = Field([], description="Text that ends a choice (not included).")
    seed: int | None = Field(None, description="Choice i samples with seed + i (any integer, taken modulo 2**64).")
    ignore_eos: bool = Field(False, description="Generate max_tokens even past an end-of-sequence token.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data):
        for key, fine in UNSUPPORTED.items():
            if isinstance(data, dict) and data.get(key) not in fine:
                raise ValueError(f"{key} is not supported by this server; remove it from the request")
        return data


class JsonSchemaFormat(Body):
    name: str = Field("response", max_length=64)
    description: str = ""
    json_schema: dict = Field(alias="schema", description="The JSON schema every answer is held to.")
    strict: bool = Field(True, description="Always true here: the schema is enforced token by token.")


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema: {\"name\": ..., \"schema\": {...}}")
        return self


class Sampling(GenerationParams):
    model: str = Field(min_length=1, description="A served model's name (GET /v1/models).")
    response_format: ResponseFormat = Field(ResponseFormat(), description="json_object or json_schema: the answer "
                                            "is held to it token by token, so it always parses (unless max_tokens "
                                            "cuts it short).")
    n: int = Field(1, ge=1, le=8, description="Choices to generate.")
    stream: bool = Field(False, description="Server-sent events, ending with data: [DONE].")
    stream_options: StreamOptions = StreamOptions()


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSpec] = Field([], max_length=128, description="Functions the model may call.")
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice = Field(
        "auto", description="required or a named function: a call is forced token by token.")
    parallel_tool_calls: bool = Field(True, description="Allow more than one call in a turn.")
    logprobs: bool = Field(False, description="Each generated token's log-probability.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: the most likely alternatives.")

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools]
        if self.tool_choice != "auto" and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.get("name") not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.get('name')!r}, not one of the tools")
        return self


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="A string (or a list of one).")
    logprobs: int | None = Field(None, ge=0, le=5, description="Log-probabilities of each token and this many "
                                 "alternatives.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("must be a string (or a list of one string)")
        return v if isinstance(v, str) else v[0]


class EmbeddingRequest(Body):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: float32 little-endian.")

    @field_validator("input")
    @classmethod
    def _texts(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must be a string or a non-empty list of strings")
        return [v] if isinstance(v, str) else v


class PredictRequest(Body):
    """TensorFlow-Serving predict: `instances` (rows) or `inputs` (columns); strings for text models.
    A text generator takes prompt strings and answers their completions."""
    instances: list[Any] | None = Field(None, min_length=1)
    inputs: dict[str, Any] | list[Any] | str | None = None
    parameters: dict[str, Any] | None = Field(None, description="Text generators: max_tokens, temperature, "
                                              "top_p, seed, stop, ignore_eos.")

    @model_validator(mode="after")
    def _one_format(self):
        if self.instances is None and self.inputs is None:
            raise ValueError("give 'instances' (row format) or 'inputs' (columnar format)")
        return self


class V2Tensor(Body):
    name: str
    shape: list[int]
    datatype: V2Datatype
    data: list[Any] | None = None
    parameters: dict[str, Any] = {}

    @field_validator("name", "datatype", mode="before")
    @classmethod
    def _strings(cls, v):
        if not isinstance(v, str):
            raise ValueError("an input's name and datatype must be strings")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v):
        if any(d < 0 for d in v):
            raise ValueError("must be a list of non-negative integers")
        return v


class V2Output(Body):
    name: str
    parameters: dict[str, Any] = {}


class V2InferRequest(Body):
    """KServe v2 inference request (JSON; with `Inference-Header-Content-Length` binary tensors follow it)."""
    id: str | int | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2Output] = []
    parameters: dict[str, Any] = {}


MODELS = (ChatRequest, CompletionRequest, EmbeddingRequest, PredictRequest, V2InferRequest)
PHRASES = {"missing": "missing", "int_type": "must be an integer", "int_from_float": "must be an integer",
           "float_type": "must be a number", "bool_type": "must be true or false", "string_type": "must be a string",
           "list_type": "must be a list", "dict_type": "must be an object", "model_type": "must be an object",
           "literal_error": "must be one of {expected}", "greater_than_equal": "must be at least {ge}",
           "greater_than": "must be above {gt}", "less_than_equal": "must be at most {le}",
           "too_short": "must not be empty"}
HINTS = {"model": "; name a served model (GET /v1/models lists them)"}


def parse(schema: type[BaseModel], data, where: str = ""):
    """`data` validated as `schema`; RequestError (400) naming the first problem's field otherwise."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise RequestError(explain(err.errors()[0], where)) from None


def explain(error: dict, where: str = "") -> str:
    """One pydantic error as a sentence: "<field> must be ...", or the validator's own words."""
    path = [str(p) for p in error["loc"] if isinstance(p, int) or not ("[" in p or p in ("str", "int", "float"))]
    field = ".".join([where] * bool(where) + path)
    if error["type"] == "value_error":
        text = str(error["ctx"]["error"])
        return f"{field}: {text}" if field and text.startswith("must") else text
    phrase = PHRASES.get(error["type"])
    if phrase is None:
        return f"{field}: {error['msg']}" if field else error["msg"]
    phrase = phrase.format(**{k: v for k, v in (error.get("ctx") or {}).items()})
    if phrase == "missing":
        return f"{field}: missing{HINTS.get(field, '')}"
    return f"{field} {phrase}" if field else phrase


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
