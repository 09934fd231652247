"""OpenAI-compatible routes: chat completions, completions (both streamed as server-sent events on
request), embeddings, model list; also under /v3 as OpenVINO Model Server spells them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from pressa.serve import schemas
from pressa.serve.models import RequestError, ServedModel

# fields of OpenAI's requests this server does not implement: refused when they ask for something
UNSUPPORTED = {"echo": (False, None), "best_of": (1, None), "suffix": (None, ""), "logit_bias": (None, {}),
               "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"})}


def _number(data: dict, key: str, default, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    """A numeric field within [lo, hi] ((lo, hi] with lo_open); booleans are not numbers here."""
    value = data.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RequestError(f"{key} must be {'an integer' if integer else 'a number'}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise RequestError(f"{key} must be in {'(' if lo_open else '['}{lo}, {hi}]")
    return value


def sampling_config(data: dict, max_tokens: int, chat: bool | None = None):
    """The request's sampling settings, each checked; `chat` (True/False for the OpenAI routes) reads
    logprobs as the chat API (logprobs: bool, top_logprobs) or the completions API (logprobs: int)."""
    from pressa.genai.sampling import SamplingConfig

    for key, fine in UNSUPPORTED.items():
        if data.get(key) not in fine:
            raise RequestError(f"{key} is not supported by this server; remove it from the request")
    limit = min(256, max_tokens)
    n_new = _number(data, "max_completion_tokens", None, 1, 1 << 62, integer=True)
    n_new = _number(data, "max_tokens", limit, 1, 1 << 62, integer=True) if n_new is None else n_new
    if n_new > max_tokens:
        raise RequestError(f"max_tokens {n_new} is over this server's limit of {max_tokens}")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a string or a list of strings")
    seed = _number(data, "seed", None, -float("inf"), float("inf"), integer=True)     # any integer, as OpenAI
    ignore_eos = data.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError("ignore_eos must be true or false")
    return SamplingConfig(temperature=float(_number(data, "temperature", 1.0, 0, 2)),
                          top_p=float(_number(data, "top_p", 1.0, 0, 1, lo_open=True)),
                          top_k=max(0, _number(data, "top_k", 0, -1, 1 << 31, integer=True)),     # -1: off
                          repetition_penalty=float(_number(data, "repetition_penalty", 1.0, 0, 10, lo_open=True)),
                          seed=None if seed is None else seed % (1 << 64), max_new_tokens=n_new,
                          stop=[s for s in stop if s], ignore_eos=ignore_eos, logprobs=_logprobs(data, chat))


def _logprobs(data: dict, chat: bool | None) -> int | None:
    """How many alternatives to report per token (0: only the chosen one's), or None for no logprobs."""
    if chat is None:
        return None
    if chat:
        asked = data.get("logprobs")
        if asked is not None and not isinstance(asked, bool):
            raise RequestError("logprobs must be true or false")
        top = _number(data, "top_logprobs", None, 0, 20, integer=True)
        if top is not None and not asked:
            raise RequestError("top_logprobs needs logprobs: true")
        return (top or 0) if asked else None
    return _number(data, "logprobs", None, 0, 5, integer=True)


def _prompt(data: dict, chat: bool):
    if chat:
        msgs = data.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
                ("system", "user", "assistant", "developer") for m in msgs):
            raise RequestError("messages must be a non-empty list of {role, content} with string content")
        return [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in msgs]
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string")
    return prompt


def _model_name(data: dict) -> str:
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise RequestError("model: missing; name a served model (GET /v1/models lists them)")
    return name


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


def add_openai_routes(app, models: dict[str, ServedModel], get_model, body) -> None:
    async def complete(request: Request, chat: bool):
        data = await body(request)
        m = get_model(_model_name(data))
        if m.kind != "llm":
            raise RequestError(f"model {m.name} does not generate text")
        cfg = sampling_config(data, app.state.max_tokens, chat)
        prompt = _prompt(data, chat)
        n = data.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 8:
            raise RequestError("n must be an integer from 1 to 8")
        ids = m.model.encode_prompt(prompt, None if chat else False)
        prompt_tokens = len(ids)
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def emit(i, text, finish, generated, records=()):          # called on the scheduler's thread
            loop.call_soon_threadsafe(q.put_nowait, (i, text, finish, generated, records))

        options = data.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError("stream_options must be an object")
        include_usage = bool(options.get("include_usage"))
        seqs = m.submit([ids] * n, cfg, emit)
        kind = "chat.completion" if chat else "text_completion"

        async def events(watch: bool = False):
            """(choice, text, finish, generated) until every choice has finished (its consumer cancels what
            is left when it stops). `watch`: look for a client that went away (a stream notices on its
            next write; a plain answer has none)."""
            left, check = n, loop.time() + 0.5
            while left:
                try:
                    item = await asyncio.wait_for(q.get(), 0.5) if watch else await q.get()
                except TimeoutError:
                    item = None
                if watch and loop.time() >= check:          # twice a second, tokens or not
                    check = loop.time() + 0.5
                    if await request.is_disconnected():
                        return
                if item is not None:
                    left -= item[2] is not None
                    yield item

        def cancel():
            for s in seqs:
                s.cancel()

        def usage(used: int) -> dict:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": used, "total_tokens": prompt_tokens + used}

        lp = LogprobFormat(m.model.tokenizer, chat) if cfg.logprobs is not None else None
        if not data.get("stream"):
            texts, finishes, used, records = [""] * n, ["length"] * n, 0, [[] for _ in range(n)]
            try:
                async for i, piece, fin, gen, recs in events(watch=True):
                    if piece is None:
                        raise RequestError(f"generation failed ({fin})", 500)
                    texts[i] += piece
                    records[i] += recs
                    if fin:
                        finishes[i], used = fin, used + gen
            finally:
                cancel()
            choices = [({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        if chat else {"index": i, "text": t, "finish_reason": f})
                       for i, (t, f) in enumerate(zip(texts, finishes))]
            for i, c in enumerate(choices):
                c["logprobs"] = lp.format(records[i]) if lp else None
            return {"id": rid, "object": kind, "created": created, "model": m.name, "choices": choices,
                    "usage": usage(used)}

        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i, delta=None, text=None, finish=None, recs=()):
            c = {"index": i, "finish_reason": finish}
            c.update({"delta": delta or {}} if chat else {"text": text or ""})
            c["logprobs"] = lp.format(recs, i) if lp and recs else None
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": m.name,
                                          "choices": [c]}) + "\n\n"

        async def sse():
            used = 0
            try:
                if chat:              # the role first, so that clients can time the first token
                    for i in range(n):
                        yield chunk(i, {"role": "assistant", "content": ""})
                async for i, piece, fin, gen, recs in events():
                    if piece is None:
                        err = {"message": fin, "type": "server_error", "param": None, "code": None}
                        yield "data: " + json.dumps({"error": err}) + "\n\n"
                        return
                    if piece or recs:
                        yield chunk(i, {"content": piece}, piece, recs=recs)
                    if fin:
                        used += gen
                        yield chunk(i, {}, "", fin)
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": m.name,
                                                 "choices": [], "usage": usage(used)}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancel()              # a client that went away stops its generations and frees their slots

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def embeddings(request: Request):
        data = await body(request)
        m = get_model(_model_name(data))
        texts = data.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("input must be a string or a non-empty list of strings")
        fmt = data.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise RequestError("encoding_format must be float or base64")
        vecs, used = await asyncio.to_thread(m.embed, texts)

        def encode(v):                # base64: the float32 little-endian bytes, as OpenAI sends them
            return v.tolist() if fmt == "float" else base64.b64encode(v.astype("<f4").tobytes()).decode()
        return {"object": "list", "model": m.name, "usage": {"prompt_tokens": used, "total_tokens": used},
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vecs)]}

    async def list_models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "pressa"}
                                           for n in models]}

    async def chat_completions(request: Request):
        return await complete(request, True)

    async def completions(request: Request):
        return await complete(request, False)

    for prefix in ("/v1", "/v3"):
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"],
                          openapi_extra=schemas.body(schemas.ChatRequest))
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"],
                          openapi_extra=schemas.body(schemas.CompletionRequest))
        app.add_api_route(f"{prefix}/embeddings", embeddings, methods=["POST"],
                          openapi_extra=schemas.body(schemas.EmbeddingRequest))
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v3/models", list_models, methods=["GET"])
