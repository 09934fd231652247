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


def sampling_config(data: dict, max_tokens: int):
    from pressa.genai.sampling import SamplingConfig

    n_new = data.get("max_completion_tokens", data.get("max_tokens"))
    n_new = min(256, max_tokens) if n_new is None else n_new
    if not isinstance(n_new, int) or n_new < 1:
        raise RequestError("max_tokens must be a positive integer")
    if n_new > max_tokens:
        raise RequestError(f"max_tokens {n_new} is over this server's limit of {max_tokens}")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a string or a list of strings")
    stop = [s for s in stop if s]
    try:
        temperature = float(data.get("temperature", 1.0))
        top_p = float(data.get("top_p", 1.0))
    except (TypeError, ValueError):
        raise RequestError("temperature and top_p must be numbers") from None
    if not 0 <= temperature <= 2 or not 0 < top_p <= 1:
        raise RequestError("temperature must be in [0, 2] and top_p in (0, 1]")
    seed = data.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise RequestError("seed must be an integer")
    if seed is not None:
        seed %= 1 << 64                 # any integer, as OpenAI takes them; NumPy seeds are non-negative
    ignore_eos = data.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError("ignore_eos must be true or false")
    return SamplingConfig(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=n_new, stop=stop,
                          ignore_eos=ignore_eos)


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


def add_openai_routes(app, models: dict[str, ServedModel], get_model, body) -> None:
    async def complete(request: Request, chat: bool):
        data = await body(request)
        m = get_model(str(data.get("model", "")))
        if m.kind != "llm":
            raise RequestError(f"model {m.name} does not generate text")
        cfg = sampling_config(data, app.state.max_tokens)
        prompt = _prompt(data, chat)
        n = data.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 8:
            raise RequestError("n must be an integer from 1 to 8")
        ids = m.model.encode_prompt(prompt, None if chat else False)
        prompt_tokens = len(ids)
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def emit(i, text, finish, generated):          # called on the scheduler's thread
            loop.call_soon_threadsafe(q.put_nowait, (i, text, finish, generated))

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

        if not data.get("stream"):
            texts, finishes, used = [""] * n, ["length"] * n, 0
            try:
                async for i, piece, fin, gen in events(watch=True):
                    if piece is None:
                        raise RequestError(f"generation failed ({fin})", 500)
                    texts[i] += piece
                    if fin:
                        finishes[i], used = fin, used + gen
            finally:
                cancel()
            choices = [({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        if chat else {"index": i, "text": t, "finish_reason": f, "logprobs": None})
                       for i, (t, f) in enumerate(zip(texts, finishes))]
            return {"id": rid, "object": kind, "created": created, "model": m.name, "choices": choices,
                    "usage": usage(used)}

        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i, delta=None, text=None, finish=None):
            c = {"index": i, "finish_reason": finish}
            c.update({"delta": delta or {}} if chat else {"text": text or "", "logprobs": None})
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": m.name,
                                          "choices": [c]}) + "\n\n"

        async def sse():
            used = 0
            try:
                if chat:              # the role first, so that clients can time the first token
                    for i in range(n):
                        yield chunk(i, {"role": "assistant", "content": ""})
                async for i, piece, fin, gen in events():
                    if piece is None:
                        err = {"message": fin, "type": "server_error", "param": None, "code": None}
                        yield "data: " + json.dumps({"error": err}) + "\n\n"
                        return
                    if piece:
                        yield chunk(i, {"content": piece}, piece)
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
        m = get_model(str(data.get("model", "")))
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
