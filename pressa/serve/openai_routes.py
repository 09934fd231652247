"""OpenAI-compatible routes: chat completions, completions (both streamed as server-sent events on
request), embeddings, model list; also under /v3 as OpenVINO Model Server spells them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from pressa.serve.models import RequestError, ServedModel


def _sampling(data: dict, max_tokens: int):
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
    return SamplingConfig(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=n_new, stop=stop)


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


def _events(model: ServedModel, prompt, cfg, chat: bool, seed_offset: int, out_q, loop, cancel: threading.Event):
    """Runs in a worker thread: (text, finish, generated) tuples into an asyncio queue."""
    import dataclasses

    try:
        m = model.generator()
        if cfg.seed is not None:
            cfg = dataclasses.replace(cfg, seed=cfg.seed + seed_offset)
        for ev in m.stream_batch([prompt], cfg=cfg, chat=None if chat else False):
            if cancel.is_set():
                break
            loop.call_soon_threadsafe(out_q.put_nowait, (ev.text, ev.finish, ev.generated))
    except Exception as err:          # reported to the client as the stream's end
        loop.call_soon_threadsafe(out_q.put_nowait, (None, f"error: {err}", 0))
    finally:
        model.release()
        loop.call_soon_threadsafe(out_q.put_nowait, None)


def add_openai_routes(app, models: dict[str, ServedModel], get_model, body, stats) -> None:
    async def complete(request: Request, chat: bool):
        data = await body(request)
        m = get_model(str(data.get("model", "")))
        if m.kind != "llm":
            raise RequestError(f"model {m.name} does not generate text")
        cfg = _sampling(data, app.state.max_tokens)
        prompt = _prompt(data, chat)
        n = data.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 8:
            raise RequestError("n must be an integer from 1 to 8")
        prompt_tokens = len(m.model.encode_prompt(prompt, None if chat else False))
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()

        async def run_one(i: int, cancel: threading.Event):
            q: asyncio.Queue = asyncio.Queue()
            await asyncio.to_thread(m.acquire)
            threading.Thread(target=_events, args=(m, prompt, cfg, chat, i, q, loop, cancel), daemon=True).start()
            while (item := await q.get()) is not None:
                yield item

        kind = "chat.completion" if chat else "text_completion"
        if not data.get("stream"):
            texts, finishes, used = [], [], 0
            for i in range(n):
                text, finish = "", "length"
                async for piece, fin, gen in run_one(i, threading.Event()):
                    if piece is None:
                        raise RequestError(f"generation failed ({fin})", 500)
                    text += piece
                    if fin:
                        finish, used = fin, used + gen
                texts.append(text)
                finishes.append(finish)
            stats.tokens += used
            choices = [({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        if chat else {"index": i, "text": t, "finish_reason": f, "logprobs": None})
                       for i, (t, f) in enumerate(zip(texts, finishes))]
            return {"id": rid, "object": kind, "created": created, "model": m.name, "choices": choices,
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                              "total_tokens": prompt_tokens + used}}

        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i, delta=None, text=None, finish=None):
            c = {"index": i, "finish_reason": finish}
            c.update({"delta": delta or {}} if chat else {"text": text or "", "logprobs": None})
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": m.name,
                                          "choices": [c]}) + "\n\n"

        async def sse():
            cancel = threading.Event()
            used = 0
            try:
                for i in range(n):
                    if chat:
                        yield chunk(i, {"role": "assistant", "content": ""})
                    async for piece, fin, gen in run_one(i, cancel):
                        if piece is None:
                            yield "data: " + json.dumps({"error": fin}) + "\n\n"
                            return
                        if piece:
                            yield chunk(i, {"content": piece}, piece)
                        if fin:
                            used += gen
                            yield chunk(i, {}, "", fin)
                stats.tokens += used
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": m.name,
                                                 "choices": [], "usage": {
                                                     "prompt_tokens": prompt_tokens, "completion_tokens": used,
                                                     "total_tokens": prompt_tokens + used}}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()          # a client that went away stops its generation and frees the slot

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def embeddings(request: Request):
        data = await body(request)
        m = get_model(str(data.get("model", "")))
        texts = data.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("input must be a string or a non-empty list of strings")
        vecs, used = await asyncio.to_thread(m.embed, texts)
        return {"object": "list", "model": m.name, "usage": {"prompt_tokens": used, "total_tokens": used},
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]}

    async def list_models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "pressa"}
                                           for n in models]}

    async def chat_completions(request: Request):
        return await complete(request, True)

    async def completions(request: Request):
        return await complete(request, False)

    for prefix in ("/v1", "/v3"):
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"])
        app.add_api_route(f"{prefix}/embeddings", embeddings, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v3/models", list_models, methods=["GET"])
