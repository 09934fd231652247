"""TF-Serving predict and KServe v2 infer over HTTP: answers equal to running the artifact directly,
the official tritonclient (binary tensors both ways), a text generator behind both, and dynamic
batching of concurrent requests."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers import KEY, SENTENCES, call


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
