"""The OpenAI protocol: chat completions, completions (both streamed as server-sent events on
request), embeddings, model list; also under /v3 as OpenVINO Model Server spells them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from pressa.genai.reasoning import OPEN, ThinkSplit, thinks
from pressa.genai.sampling import SamplingConfig
from pressa.serve import schemas
from pressa.serve.bodies import json_body, model_named
from pressa.serve.models import RequestError, TensorModel, TextGenerator
from pressa.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, GenerationParams, parse

router = APIRouter()


def sampling_config(p: GenerationParams, max_tokens: int, logprobs: int | None = None) -> SamplingConfig:
    """The request's validated sampling settings, within the server's --max-tokens."""
    n_new = p.max_completion_tokens or p.max_tokens or min(256, max_tokens)
    if n_new > max_tokens:
        raise RequestError(f"max_tokens {n_new} is over this server's limit of {max_tokens}")
    stop = [p.stop] if isinstance(p.stop, str) else p.stop
    return SamplingConfig(temperature=p.temperature, top_p=p.top_p, top_k=max(0, p.top_k),      # -1: off
                          repetition_penalty=p.repetition_penalty,
                          seed=None if p.seed is None else p.seed % (1 << 64), max_new_tokens=n_new,
                          stop=[s for s in stop if s], ignore_eos=p.ignore_eos, logprobs=logprobs)


def generation_config(params: dict, max_tokens: int) -> SamplingConfig:
    """A predict or infer request's `parameters` as a text generator's sampling settings."""
    return sampling_config(parse(GenerationParams, params, "parameters"), max_tokens)


def response_grammar(fmt: schemas.ResponseFormat) -> str | None:
    """The grammar of a request's response_format (None for text)."""
    from pressa.errors import BadArgument
    from pressa.genai.constraints import json_schema_grammar

    if fmt.type == "text":
        return None
    try:
        return json_schema_grammar(True if fmt.type == "json_object" else fmt.json_schema.json_schema)
    except BadArgument as err:
        raise RequestError(f"response_format: {err}") from None


class LogprobFormat:
    """Token log-probability records (sampling.token_logprobs) as OpenAI writes them: for chat,
    {content: [{token, logprob, bytes, top_logprobs}]}; for completions, {tokens, token_logprobs,
    top_logprobs, text_offset} (offsets counted over the choice's text so far)."""

    def __init__(self, tokenizer, chat: bool):
        self.tok, self.chat, self.offsets = tokenizer, chat, {}

    def token(self, token_id: int) -> tuple[str, list[int]]:
        raw = self.tok.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), list(raw)

    def format(self, records: list[dict], choice: int = 0) -> dict:
        if self.chat:
            content = []
            for r in records:
                text, raw = self.token(r["id"])
                alts = [dict(zip(("token", "bytes"), self.token(i)), logprob=v) for i, v in r["top"]]
                content.append({"token": text, "logprob": r["logprob"], "bytes": raw, "top_logprobs": alts})
            return {"content": content}
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for r in records:
            text = self.token(r["id"])[0]
            at = self.offsets.get(choice, 0)
            out["tokens"].append(text)
            out["token_logprobs"].append(r["logprob"])
            out["top_logprobs"].append({self.token(i)[0]: v for i, v in r["top"]})
            out["text_offset"].append(at)
            self.offsets[choice] = at + len(text)
        return out


class Completion:
    """One chat or completion request's n sequences, answered whole or streamed."""

    def __init__(self, request: Request, req: ChatRequest | CompletionRequest):
        self.request, self.req, self.chat = request, req, isinstance(req, ChatRequest)
        self.m, adapter = with_adapter(request, req.model)
        logprobs = (req.top_logprobs or 0) if self.chat and req.logprobs else None if self.chat else req.logprobs
        self.cfg = sampling_config(req, request.app.state.max_tokens, logprobs)
        self.cfg.adapter = adapter
        self.cfg.grammar = response_grammar(req.response_format)
        self.tools = None
        if self.chat and req.tools and req.tool_choice != "none":
            from pressa.serve.tool_calls import ChatTools

            self.tools = ChatTools(req, self.m.model)
            if self.tools.grammar and self.cfg.grammar:
                raise RequestError("response_format and a required or named tool_choice cannot both hold; "
                                   "ask for one")
            self.cfg.grammar = self.tools.grammar or self.cfg.grammar
            self.cfg.skip_special_tokens = self.tools.skip_special
        if self.tools:
            ids = self.tools.encode([m.template_dict() for m in req.messages])
        elif self.chat:
            ids = self.m.model.encode_prompt([m.template_dict() for m in req.messages])
        else:
            ids = self.m.model.encode_prompt(req.prompt, False)
        self.prompt_tokens, self.n = len(ids), req.n
        tok = self.m.model.tokenizer
        self.think = self.chat and thinks(tok.chat_template)          # reasoning_content split off
        self.think_inside = self.think and tok.decode(ids[-8:], skip_special_tokens=False).rstrip().endswith(OPEN)
        self.rid = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        self.lp = LogprobFormat(self.m.model.tokenizer, self.chat) if self.cfg.logprobs is not None else None
        self.seqs = self.m.submit([ids] * self.n, self.cfg, self._emit)

    def _emit(self, i, text, finish, generated, records=()):          # called on the scheduler's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (i, text, finish, generated, records))

    async def events(self, watch: bool = False):
        """(choice, text, finish, generated, records) until every choice has finished (its consumer
        cancels what is left when it stops). `watch`: look for a client that went away (a stream
        notices on its next write; a plain answer has none)."""
        left, check = self.n, self.loop.time() + 0.5
        while left:
            try:
                item = await asyncio.wait_for(self.queue.get(), 0.5) if watch else await self.queue.get()
            except TimeoutError:
                item = None
            if watch and self.loop.time() >= check:          # twice a second, tokens or not
                check = self.loop.time() + 0.5
                if await self.request.is_disconnected():
                    return
            if item is not None:
                left -= item[2] is not None
                yield item

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancel()

    def usage(self, used: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": used,
                "total_tokens": self.prompt_tokens + used}

    def envelope(self, obj: str, choices: list, **more) -> dict:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.req.model, "choices": choices,
                **more}

    async def answer(self) -> dict:
        n = self.n
        texts, finishes, used, records = [""] * n, ["length"] * n, 0, [[] for _ in range(n)]
        try:
            async for i, piece, fin, gen, recs in self.events(watch=True):
                if piece is None:
                    raise RequestError(f"generation failed ({fin})", 500)
                texts[i] += piece
                records[i] += recs
                if fin:
                    finishes[i], used = fin, used + gen
        finally:
            self.cancel()
        choices = []
        for i, (t, f) in enumerate(zip(texts, finishes)):
            if not self.chat:
                choices.append({"index": i, "text": t, "finish_reason": f})
                continue
            reasoning, t = ThinkSplit(self.think_inside).split(t) if self.think else ("", t)
            msg, f = self.tools.message(t, f) if self.tools else ({"role": "assistant", "content": t}, f)
            if reasoning:
                msg["reasoning_content"] = reasoning
            choices.append({"index": i, "message": msg, "finish_reason": f})
        for i, c in enumerate(choices):
            c["logprobs"] = self.lp.format(records[i]) if self.lp else None
        return self.envelope("chat.completion" if self.chat else "text_completion", choices, usage=self.usage(used))

    def chunk(self, i, piece=None, finish=None, recs=()) -> str:
        c = {"index": i, "finish_reason": finish}
        c.update({"delta": piece or {}} if self.chat else {"text": (piece or {}).get("content", "")})
        c["logprobs"] = self.lp.format(recs, i) if self.lp and recs else None
        return self.sse(self.envelope(self.stream_object, [c]))

    stream_object = property(lambda self: "chat.completion.chunk" if self.chat else "text_completion")

    @staticmethod
    def sse(obj) -> str:
        return "data: " + json.dumps(obj) + "\n\n"

    @staticmethod
    def _deltas(piece: str, final: bool, split, calls) -> list[dict]:
        """A piece of a choice's text as chat deltas: reasoning_content (split off by `split`), then
        content or tool calls (`calls`, a ToolStream)."""
        parts = split.feed(piece, final) if split else [("content", piece)]
        out = [{"reasoning_content": t} for k, t in parts if k == "reasoning"]
        content = "".join(t for k, t in parts if k == "content")
        if calls:
            return out + calls.feed(content, final)
        return out + ([{"content": content}] if content else [])

    async def stream(self):
        used = 0
        try:
            if self.chat:              # the role first, so that clients can time the first token
                for i in range(self.n):
                    yield self.chunk(i, {"role": "assistant", "content": ""})
            calls = {i: self.tools.stream() for i in range(self.n)} if self.tools else {}
            splits = {i: ThinkSplit(self.think_inside) for i in range(self.n)} if self.think else {}
            async for i, piece, fin, gen, recs in self.events():
                if piece is None:
                    yield self.sse({"error": {"message": fin, "type": "server_error", "param": None, "code": None}})
                    return
                if i in calls or i in splits:
                    for delta in self._deltas(piece, bool(fin), splits.get(i), calls.get(i)):
                        yield self.chunk(i, delta)
                elif piece or recs:
                    yield self.chunk(i, {"content": piece}, recs=recs)
                if fin:
                    used += gen
                    yield self.chunk(i, {}, "tool_calls" if i in calls and calls[i].calls else fin)
            if self.req.stream_options.include_usage:
                yield self.sse(self.envelope(self.stream_object, [], usage=self.usage(used)))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()              # a client that went away stops its generations and frees their slots


async def _complete(request: Request, schema) -> dict | StreamingResponse:
    c = Completion(request, parse(schema, await json_body(request)))
    if c.req.stream:
        return StreamingResponse(c.stream(), media_type="text/event-stream")
    return await c.answer()


async def chat_completions(request: Request):
    return await _complete(request, ChatRequest)


async def completions(request: Request):
    return await _complete(request, CompletionRequest)


async def embeddings(request: Request):
    req = parse(EmbeddingRequest, await json_body(request))
    m = model_named(request, req.model, TensorModel, "/v1/chat/completions or /v1/completions")
    vecs, used = await asyncio.to_thread(m.embed, req.input)

    def encode(v):                # base64: the float32 little-endian bytes, as OpenAI sends them
        return v.tolist() if req.encoding_format == "float" else base64.b64encode(v.astype("<f4").tobytes()).decode()
    return {"object": "list", "model": m.name, "usage": {"prompt_tokens": used, "total_tokens": used},
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vecs)]}


def with_adapter(request: Request, name: str) -> tuple[TextGenerator, str | None]:
    """The text generator and run-time adapter a request's "model" names: "base", or "base:adapter"."""
    models = request.app.state.models
    base, sep, adapter = name.rpartition(":")
    if name in models or not sep or base not in models:
        return model_named(request, name, TextGenerator, "/v1/embeddings"), None
    m = model_named(request, base, TextGenerator, "/v1/embeddings")
    if adapter not in m.model.session.adapters:
        have = ", ".join(f"{base}:{a}" for a in m.model.session.adapters) or "none"
        raise RequestError(f"model {base} has no adapter {adapter!r}; its adapters: {have}", 404)
    return m, adapter


async def list_models(request: Request):
    ids = []
    for n, m in request.app.state.models.items():
        ids.append(n)
        if isinstance(m, TextGenerator):
            ids += [f"{n}:{a}" for a in m.model.session.adapters]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "pressa"} for i in ids]}


for prefix in ("/v1", "/v3"):
    router.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"],
                         openapi_extra=schemas.body(ChatRequest))
    router.add_api_route(f"{prefix}/completions", completions, methods=["POST"],
                         openapi_extra=schemas.body(CompletionRequest))
    router.add_api_route(f"{prefix}/embeddings", embeddings, methods=["POST"],
                         openapi_extra=schemas.body(EmbeddingRequest))
    router.add_api_route(f"{prefix}/models", list_models, methods=["GET"])
