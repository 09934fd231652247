"""The real server (uvicorn on 127.0.0.1, a free port) over HTTP: each protocol's success and error
shapes, the API key, predict equal to running the artifact directly, streamed chat equal to the
non-streamed text for the same seed, and a client that disconnects mid-stream."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from helpers import KEY, SENTENCES, call, free_port, message, run_cli, running, write_bert


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory):

    from pressa.capture.decoder import BuildOptions
    from pressa.capture.llm import build_llm
    from pressa.serve.models import load_models

    from conftest import make_tiny

    d = tmp_path_factory.mktemp("serve")
    assert run_cli("capture", "--model", write_bert(d / "hf"), "-o", d / "enc").returncode == 0
    # a long context (generations that outlast a client) and fp32 (a row's logits do not depend on
    # the rows decoded beside it, so concurrent answers can be compared with solo ones exactly)
    make_tiny("llama", d / "hf-llm", max_position_embeddings=4096)
    build_llm(str(d / "hf-llm"), d / "llm", BuildOptions(precision="fp32"))
    models = load_models([{"name": "llm", "path": str(d / "llm"), "max_concurrency": 4},
                          {"name": "small", "path": str(tiny_artifact("llama", "int4"))},
                          {"name": "enc", "path": str(d / "enc"), "max_wait_ms": 50}])
    with running(models, max_tokens=4000) as port:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "enc": d / "enc", "llm": d / "llm", "models": models}


def test_health_metadata_and_key(server):
    assert call(server, "/v2/health/live", key=None) == (200, {"live": True})
    assert call(server, "/v2/health/ready", key=None)[0] == 200
    status, body = call(server, "/v1/models", key=None)
    assert status == 401 and "API key" in body["error"]["message"] and body["error"]["type"] == "authentication_error"
    status, body = call(server, "/v2/models/enc", key=None)
    assert status == 401 and "API key" in body["error"]
    assert call(server, "/v1/models", key="wrong")[0] == 401
    status, body = call(server, "/v1/models")
    assert status == 200 and {m["id"] for m in body["data"]} == {"llm", "small", "enc"}
    status, meta = call(server, "/v2/models/enc")
    assert status == 200 and {t["name"] for t in meta["inputs"]} >= {"input_ids", "attention_mask"}
    assert meta["inputs"][0]["datatype"] == "INT64" and meta["outputs"][0]["datatype"] == "FP32"
    assert call(server, "/v2/models/enc/ready") == (200, {"name": "enc", "ready": True})
    status, body = call(server, "/v2/models/nope")
    assert status == 404 and "nope" in body["error"]
    status, body = call(server, "/v1/models/enc")
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = call(server, "/v1/models/enc/metadata")
    assert "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    assert call(server, "/openapi.json")[0] == 200


def test_predict_and_infer_equal_direct_run(server):
    from pressa.runtime.encoder import EncoderModel

    enc = EncoderModel(server["enc"])
    feeds = enc.encode_text(SENTENCES[:2])
    want = enc.run(dict(feeds))["last_hidden_state"]
    status, body = call(server, "/v1/models/enc:predict", {"inputs": {k: v.tolist() for k, v in feeds.items()}})
    assert status == 200
    np.testing.assert_allclose(np.array(body["outputs"]), want, atol=1e-5)
    rows = [{k: v[i].tolist() for k, v in feeds.items()} for i in range(2)]
    status, body = call(server, "/v1/models/enc:predict", {"instances": rows})
    np.testing.assert_allclose(np.array(body["predictions"]), want, atol=1e-5)
    status, body = call(server, "/v1/models/enc:predict", {"instances": SENTENCES[:2]})     # text in the server
    np.testing.assert_allclose(np.array(body["predictions"]), want, atol=1e-5)
    tensors = [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
               for k, v in feeds.items()]
    status, body = call(server, "/v2/models/enc/infer", {"id": "r1", "inputs": tensors})
    assert status == 200 and body["id"] == "r1"
    out = body["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == list(want.shape)
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), want, atol=1e-5)
    status, body = call(server, "/v2/models/enc/infer", {"inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": SENTENCES[:2]}]})
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(want.shape), want, atol=1e-5)


@pytest.mark.parametrize("path,body,fragment", [
    ("/v2/models/enc/infer", {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "FP99",
                                          "data": [1, 2, 3]}]}, "datatype"),
    ("/v2/models/enc/infer", {"inputs": [{"name": "input_ids", "shape": [2, 3], "datatype": "INT64",
                                          "data": [1, 2, 3]}]}, "shape"),
    ("/v2/models/enc/infer", {"inputs": "nope"}, "inputs"),
    ("/v1/models/enc:predict", {"inputs": {"input_ids": [[1, 2]], "bogus": [[1]]}}, "bogus"),
    ("/v1/models/enc:predict", {"inputs": {"input_ids": [1, 2], "attention_mask": [1, 1],
                                           "token_type_ids": [0, 0]}}, "dimensions"),
    ("/v1/models/enc:predict", {"instances": [[1, "a"]]}, "instances"),
    ("/v1/models/enc:explain", {"instances": [1]}, "verb"),
    ("/v1/chat/completions", {"model": "llm", "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"model": "llm", "messages": [{"role": "user", "content": "t5"}], "max_tokens": 9999},
     "limit"),
    ("/v1/chat/completions", {"model": "small", "messages": [{"role": "user", "content": "t5"}],
                              "max_tokens": 3000}, "positions"),          # over the model's 256-token context
    ("/v1/completions", {"model": "llm", "prompt": "t5", "ignore_eos": "yes"}, "ignore_eos"),
    ("/v1/chat/completions", {"model": "enc", "messages": [{"role": "user", "content": "t5"}]}, "generate"),
    ("/v1/embeddings", {"model": "enc", "input": [1, 2]}, "input"),
    # found by the fuzz test (each was a 500 once)
    ("/v2/models/enc/infer", {"inputs": [{"name": "input_ids", "shape": [1], "datatype": "INT64", "data": [1],
                                          "parameters": True}]}, "parameters"),
    ("/v2/models/enc/infer", {"inputs": [{"name": ["x"], "shape": [1], "datatype": "INT64", "data": [1]}]},
     "strings"),
    ("/v2/models/enc/infer", {"inputs": [{"name": "input_ids", "shape": [1], "datatype": "INT64",
                                          "data": [2 ** 70]}]}, "range"),
    ("/v1/chat/completions", {"model": "llm", "messages": [{"role": "user", "content": "t5"}],
                              "stream_options": 3}, "stream_options"),
])
def test_bad_requests_get_4xx_json(server, path, body, fragment):
    status, answer = call(server, path, body)
    assert 400 <= status < 500 and fragment in message(answer), answer
    openai_route = path.startswith(("/v1/chat", "/v1/completions", "/v1/embeddings", "/v3/"))
    assert isinstance(answer["error"], dict) == openai_route


def test_any_integer_seed_and_empty_stop(server):
    req = {"model": "llm", "prompt": "t5 t6", "max_tokens": 4, "temperature": 1.0, "stop": [""]}
    status, a = call(server, "/v1/completions", {**req, "seed": -5})
    status2, b = call(server, "/v1/completions", {**req, "seed": (1 << 64) - 5})      # -5 modulo 2**64
    assert status == status2 == 200 and a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["completion_tokens"] == 4


def test_malformed_json(server):
    status, body = call(server, "/v2/models/enc/infer", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]


def sse_events(server, body):
    req = urllib.request.Request(server["url"] + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {KEY}",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln[6:] for ln in r.read().decode().splitlines() if ln.startswith("data: ")]
    return lines


def test_chat_stream_equals_non_streamed(server):
    req = {"model": "llm", "messages": [{"role": "user", "content": "t5 t6 t7"}], "max_tokens": 12,
           "temperature": 0.9, "top_p": 0.95, "seed": 7}
    status, full = call(server, "/v1/chat/completions", req)
    assert status == 200 and full["object"] == "chat.completion"
    text = full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] >= 1
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] + full["usage"]["completion_tokens"]
    lines = sse_events(server, {**req, "stream": True, "stream_options": {"include_usage": True}})
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert deltas == text
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [full["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def test_completions_and_embeddings(server):
    from pressa.runtime.encoder import EncoderModel

    status, body = call(server, "/v3/completions", {"model": "llm", "prompt": "t5 t6", "max_tokens": 5,
                                                    "temperature": 0, "n": 2})
    assert status == 200 and len(body["choices"]) == 2
    assert body["choices"][0]["text"] == body["choices"][1]["text"]          # greedy: the same
    status, body = call(server, "/v1/embeddings", {"model": "enc", "input": SENTENCES[:3]})
    got = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(got, EncoderModel(server["enc"]).embed(SENTENCES[:3]), atol=1e-5)


def test_openai_client_works_unchanged(server):
    """The official `openai` client: model list, chat (plain and streamed with usage), completions,
    embeddings (its default asks for base64), and its error classes for 401 / 400 / 404."""
    openai = pytest.importorskip("openai")
    from pressa.runtime.encoder import EncoderModel

    for prefix in ("/v1", "/v3"):
        client = openai.OpenAI(base_url=server["url"] + prefix, api_key=KEY, max_retries=0)
        assert {m.id for m in client.models.list()} == {"llm", "small", "enc"}
        msgs = [{"role": "user", "content": "t5 t6 t7"}]
        full = client.chat.completions.create(model="llm", messages=msgs, max_tokens=9, temperature=0.8, seed=4)
        assert full.choices[0].message.role == "assistant" and full.usage.completion_tokens >= 1
        pieces, usage = [], None
        for chunk in client.chat.completions.create(model="llm", messages=msgs, max_tokens=9, temperature=0.8,
                                                    seed=4, stream=True, stream_options={"include_usage": True}):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
        assert "".join(pieces) == full.choices[0].message.content and usage == full.usage
        done = client.completions.create(model="llm", prompt="t5 t6", max_tokens=4, temperature=0)
        assert done.choices[0].finish_reason in ("stop", "length")
        emb = client.embeddings.create(model="enc", input=SENTENCES[:2])
        np.testing.assert_allclose([d.embedding for d in emb.data], EncoderModel(server["enc"]).embed(SENTENCES[:2]),
                                   atol=1e-5)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server["url"] + prefix, api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.chat.completions.create(model="llm", messages=msgs, max_tokens=99999)
        with pytest.raises(openai.NotFoundError, match="nope"):
            client.chat.completions.create(model="nope", messages=msgs)


def test_disconnect_mid_stream_leaves_server_serving(server):
    """Clients that go away after the first bytes of 3000-token streams: their sequences are cancelled
    and their slots freed long before the tokens they asked for."""
    sch = server["models"]["llm"].scheduler
    cancelled, generated = sch.cancelled, sch.generated
    body = json.dumps({"model": "llm", "messages": [{"role": "user", "content": "t5"}], "max_tokens": 3000,
                       "ignore_eos": True, "stream": True}).encode()
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server["port"]), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert b"200" in s.recv(64)
        s.close()                                                    # gone after the first bytes
    for _ in range(100):
        if sch.active == 0 and sch.cancelled >= cancelled + 3:
            break
        time.sleep(0.05)
    assert sch.active == 0 and sch.cancelled == cancelled + 3
    assert sch.generated - generated < 3 * 3000
    # the same without streaming: the server looks for the client while it waits
    plain = json.dumps({"model": "llm", "prompt": "t5", "max_tokens": 3000, "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", server["port"]), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(plain)}\r\n\r\n".encode() + plain)
    for _ in range(100):
        if sch.active:
            break
        time.sleep(0.01)
    s.close()
    for _ in range(100):
        if sch.active == 0 and sch.cancelled == cancelled + 4:
            break
        time.sleep(0.05)
    assert sch.active == 0 and sch.cancelled == cancelled + 4
    status, out = call(server, "/v1/chat/completions", {"model": "llm", "messages": [{"role": "user",
                                                                                     "content": "t5"}],
                                                         "max_tokens": 3})
    assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"
    status, text = call(server, "/metrics")          # behind the key, as every route but health (issue 11)
    assert "pressa_requests_total" in text and "pressa_request_seconds_bucket" in text
    assert f'pressa_cancelled_sequences_total{{model="llm"}} {sch.cancelled}' in text
    assert f'pressa_time_to_first_token_seconds_count{{model="llm"}} {sch.first_tokens}' in text
    assert sch.first_tokens >= 4 and sch.first_token_seconds > 0


def test_concurrent_streams_share_decode_steps(server):
    """Eight chats at once, streamed and not: each answer equals the same request served alone, and
    the scheduler decoded them together (more sequences than steps)."""
    from concurrent.futures import ThreadPoolExecutor

    reqs = [{"model": "llm", "messages": [{"role": "user", "content": f"t{5 + i} t{50 + i}"}],
             "max_tokens": 10 + 5 * i, "temperature": 0.8 if i % 2 else 0, "seed": i, "ignore_eos": True}
            for i in range(8)]
    alone = [call(server, "/v1/chat/completions", r)[1]["choices"][0]["message"]["content"] for r in reqs]
    sch = server["models"]["llm"].scheduler
    steps, rows = sch.steps, sch.step_rows

    def one(i):
        if i % 2:
            lines = sse_events(server, {**reqs[i], "stream": True})
            return "".join(json.loads(x)["choices"][0]["delta"].get("content", "") for x in lines[:-1])
        return call(server, "/v1/chat/completions", reqs[i])[1]["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    assert together == alone
    assert sch.step_rows - rows > 1.5 * (sch.steps - steps)
    status, body = call(server, "/v1/completions", {"model": "small", "prompt": "t5 t6", "max_tokens": 4,
                                                    "n": 3, "temperature": 1.0, "seed": 3})
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2]


def test_full_queue_answers_503_with_retry_after(server):
    """One slot, no queue: while a long stream holds the slot, the next generation is refused at once
    with 503 and Retry-After, and served again once the stream is gone."""
    from pressa.serve.models import load_models

    models = load_models([{"name": "one", "path": str(server["llm"]), "max_concurrency": 1, "max_queue": 0}])
    with running(models, max_tokens=4000) as port:
        body = json.dumps({"model": "one", "prompt": "t5", "max_tokens": 3000, "ignore_eos": True,
                           "stream": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.readline()                                       # the stream is running
            short = {"model": "one", "prompt": "t5", "max_tokens": 2}
            busy = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                          data=json.dumps(short).encode(),
                                          headers={"Authorization": f"Bearer {KEY}"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(busy, timeout=30)
            assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
            assert "retry" in message(json.loads(refused.value.read()))
        sch = models["one"].scheduler
        for _ in range(100):
            if sch.active == 0:
                break
            time.sleep(0.05)
        with urllib.request.urlopen(busy, timeout=30) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] >= 1


def test_serve_bad_arguments(tmp_path):
    from helpers import assert_user_error

    assert_user_error(run_cli("serve"), "--model_name")
    assert_user_error(run_cli("serve", "--model_name", "x", "--model_path", tmp_path / "nope"), "does not exist")


def test_tritonclient_works_unchanged(server):
    """The official KServe v2 client, binary tensors both ways (its default) and plain JSON."""
    http = pytest.importorskip("tritonclient.http")
    from pressa.runtime.encoder import EncoderModel

    enc = EncoderModel(server["enc"])
    feeds = enc.encode_text(SENTENCES[:3])
    want = enc.run(dict(feeds))["last_hidden_state"]
    client = http.InferenceServerClient(f"127.0.0.1:{server['port']}")
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("enc", headers=auth)
    assert {i["name"] for i in client.get_model_metadata("enc", headers=auth)["inputs"]} == set(feeds)
    for binary in (True, False):
        inputs = []
        for k, v in feeds.items():
            x = http.InferInput(k, list(v.shape), "INT64")
            x.set_data_from_numpy(v, binary_data=binary)
            inputs.append(x)
        outputs = [http.InferRequestedOutput("last_hidden_state", binary_data=binary)]
        # a fresh headers dict per call: the client writes Inference-Header-Content-Length into it
        got = client.infer("enc", inputs, outputs=outputs, headers=dict(auth)).as_numpy("last_hidden_state")
        np.testing.assert_allclose(got, want, atol=1e-5)
    text = http.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(SENTENCES[:2], dtype=object))
    got = client.infer("enc", [text], headers=dict(auth)).as_numpy("last_hidden_state")
    np.testing.assert_allclose(got, enc.run(SENTENCES[:2])["last_hidden_state"], atol=1e-5)
    with pytest.raises(Exception, match="API key"):
        client.infer("enc", inputs)


def test_text_generator_over_predict_and_infer(server):
    """A text generator behind TF-Serving predict and KServe v2 infer (JSON and tritonclient's binary
    BYTES): prompts in, the chat completion for the same message out."""
    http = pytest.importorskip("tritonclient.http")
    params = {"max_tokens": 6, "temperature": 0}
    status, chat = call(server, "/v1/chat/completions", {"model": "llm", "messages": [
        {"role": "user", "content": "t5 t6"}], **params})
    want = chat["choices"][0]["message"]["content"]
    status, body = call(server, "/v1/models/llm:predict", {"instances": ["t5 t6", "t5 t6"], "parameters": params})
    assert status == 200 and body["predictions"] == [want, want]
    status, body = call(server, "/v2/models/llm/infer", {"inputs": [
        {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["t5 t6"]}], "parameters": params})
    assert status == 200 and body["outputs"][0] == {"name": "text_output", "shape": [1], "datatype": "BYTES",
                                                    "data": [want]}
    status, meta = call(server, "/v2/models/llm")
    assert meta["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    client = http.InferenceServerClient(f"127.0.0.1:{server['port']}")
    text = http.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array(["t5 t6"], dtype=object))
    got = client.infer("llm", [text], outputs=[http.InferRequestedOutput("text_output", binary_data=True)],
                       parameters=params, headers={"Authorization": f"Bearer {KEY}"}).as_numpy("text_output")
    assert [x.decode() for x in got] == [want]
    status, body = call(server, "/v1/models/llm:predict", {"instances": [[1, 2]]})
    assert status == 400 and "prompt strings" in body["error"]


def test_batcher_joins_splits_and_isolates():
    from concurrent.futures import ThreadPoolExecutor

    from pressa.serve.batching import Batcher

    calls = []

    def run(feeds):
        x = feeds["x"]
        calls.append(x.shape[0])
        if (x < 0).any():
            raise ValueError("negative")
        return {"y": x * 2, "s": x.sum(axis=1)}

    b = Batcher(run, max_batch=8, max_wait=0.2)
    items = [np.full((1, 3), i, np.float32) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda x: b.submit({"x": x}), items))
    for x, o in zip(items, outs):                      # each caller gets its own rows back
        np.testing.assert_array_equal(o["y"], x * 2)
        np.testing.assert_array_equal(o["s"], x.sum(axis=1))
    assert max(b.sizes) > 1 and sum(b.sizes) == 6
    odd = np.ones((1, 4), np.float32)                   # another shape is never joined with the rest
    with ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(b.submit, {"x": v}) for v in (items[0], odd, -items[1] - 1)]
        assert futs[0].result()["y"].shape == (1, 3) and futs[1].result()["y"].shape == (1, 4)
        with pytest.raises(ValueError):                 # the bad request fails alone
            futs[2].result()
    full = Batcher(lambda f: time.sleep(0.5) or {"y": f["x"]}, max_batch=1, max_wait=0, max_queue=1,
                   on_full=lambda: RuntimeError("full"))
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(full.submit, {"x": items[0]}) for _ in range(4)]
        errors = [f.exception() for f in futs]
    assert any(isinstance(e, RuntimeError) and "full" in str(e) for e in errors)
    # max_queue counts requests waiting beyond the next batch: 0 still serves one at a time
    alone = Batcher(lambda f: {"y": f["x"] + 1}, max_batch=1, max_wait=0, max_queue=0)
    np.testing.assert_array_equal(alone.submit({"x": items[2]})["y"], items[2] + 1)


def test_concurrent_predicts_are_batched_and_correct(server):
    from concurrent.futures import ThreadPoolExecutor

    from pressa.runtime.encoder import EncoderModel

    enc = EncoderModel(server["enc"])
    texts = [" ".join(SENTENCES[i].split()[:9]) for i in range(8)]      # same length: joinable
    want = [enc.run([t])["last_hidden_state"] for t in texts]
    batcher = server["models"]["enc"].batcher
    before = len(batcher.sizes)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: call(server, "/v1/models/enc:predict", {"instances": [t]}), texts))
    for (status, body), w in zip(answers, want):
        assert status == 200
        np.testing.assert_allclose(np.array(body["predictions"]), w, atol=1e-5)
    assert max(batcher.sizes[before:]) > 1


def test_graceful_shutdown_finishes_streams_and_logs_json(server):
    """`pressa serve` as users run it: SIGTERM mid-stream lets the stream finish (every token, then
    [DONE]) and the process exit 0; stderr is one JSON object per line, a request line among them
    with the id the client sent."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pressa", "serve", "--model_name", "llm", "--model_path",
                             str(server["llm"]), "--port", str(port), "--max-tokens", "4000"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        body = {"model": "llm", "prompt": "t5 t6", "max_tokens": 1500, "ignore_eos": True, "stream": True,
                "temperature": 0, "stream_options": {"include_usage": True}}
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-Request-ID": "req-42"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["x-request-id"] == "req-42"
            first = r.readline()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)                  # mid-stream
            lines = [first.decode()[6:].strip()] + [ln[6:] for ln in r.read().decode().splitlines()
                                                     if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        assert json.loads(lines[-2])["usage"]["completion_tokens"] == 1500
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]       # every line is JSON
    access = [r for r in records if r["logger"] == "pressa.access"]
    assert any(r["id"] == "req-42" and r["path"] == "/v1/completions" and r["status"] == 200 and r["ms"] > 0
               for r in access), access
    assert any(r["msg"] == "stopped" for r in records)


@pytest.fixture(scope="module")
def fuzz_schema(server):
    """A second server over the same models, with a small token limit so that fuzzed generations are
    quick; its own OpenAPI document drives the fuzzer."""
    with running(server["models"], max_body=1 << 20, max_tokens=8) as port:
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json",
                                            headers={"Authorization": f"Bearer {KEY}"})


def test_fuzz_from_openapi_finds_no_5xx(fuzz_schema):
    """Requests generated from /openapi.json, valid (positive) and not (negative), for every operation:
    every answer is below 500 and every error is JSON saying what was wrong."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    ops = [r.ok() for r in fuzz_schema.get_all_operations()]
    assert len(ops) >= 19
    seen: dict[str, collections.Counter] = {}

    def fuzzer(op, mode):
        @given(case=op.as_strategy(mode))
        @settings(max_examples=int(os.environ.get("PRESSA_FUZZ_EXAMPLES", 25)), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            seen.setdefault(op.label, collections.Counter())[response.status_code] += 1
            where = (mode.value, case.method, case.formatted_path, case.body, response.text[:300])
            assert response.status_code < 500, where
            if response.status_code >= 400:
                assert isinstance(message(response.json()), str), where
        return fuzz

    for op in ops:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzzer(op, mode)()
            except Unsatisfiable:            # nothing invalid to make of this operation
                pass
    print({k: dict(v) for k, v in seen.items()})
    # the fuzzer got past the model names into the bodies: requests that ran, for each protocol
    for label in ("POST /v1/chat/completions", "POST /v1/embeddings", "POST /v2/models/{name}/infer",
                  "POST /v1/models/{spec}"):
        assert set(seen[label]) & {200, 400}, (label, seen[label])
    assert seen["POST /v1/chat/completions"][200] > 0
