"""The real server (uvicorn on 127.0.0.1, a free port) over HTTP, what every protocol shares: health,
metadata and the API key, 4xx JSON errors for bad requests, graceful shutdown with JSON logs, and a
fuzzer driven by the server's own OpenAPI document. The protocols: test_serve_openai.py,
test_serve_tensors.py (TF-Serving and KServe v2). The `server` fixture is in conftest.py."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from helpers import KEY, call, free_port, message, run_cli, running


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


def test_malformed_json(server):
    status, body = call(server, "/v2/models/enc/infer", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]


def test_serve_bad_arguments(tmp_path):
    from helpers import assert_user_error

    assert_user_error(run_cli("serve"), "--model_name")
    assert_user_error(run_cli("serve", "--model_name", "x", "--model_path", tmp_path / "nope"), "does not exist")


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
    """A second server over the same artifacts, with a small token limit so that fuzzed generations are
    quick; its own OpenAPI document drives the fuzzer."""
    from pressa.serve.models import load_models

    # models of its own: a server closes its models' schedulers when it stops
    models = load_models([{"name": n, "path": str(m.model.folder)} for n, m in server["models"].items()])
    with running(models, max_body=1 << 20, max_tokens=8) as port:
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
