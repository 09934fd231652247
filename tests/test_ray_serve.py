"""`pressa serve --executor ray --replicas 2`: the same app on Ray Serve (a local Ray the command
starts), answering the official openai client and tritonclient; both replicas serve; SIGTERM stops it
cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("ray.serve")

from conftest import make_tiny  # noqa: E402
from helpers import free_port, run_cli, write_bert  # noqa: E402


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _replica_counts(url: str) -> dict[str, int]:
    found = re.search(r'pressa_replica_requests_total\{replica="([^"]+)"\} (\d+)', _get(url + "/metrics"))
    return {found.group(1): int(found.group(2))} if found else {}


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm

    d = tmp_path_factory.mktemp("ray-serve")
    make_tiny("llama", d / "hf-llm")
    build_llm(str(d / "hf-llm"), d / "llm", BuildOptions(precision="int4"))
    assert run_cli("capture", "--model", write_bert(d / "hf"), "-o", d / "enc").returncode == 0
    (d / "models.json").write_text(json.dumps({"models": [{"name": "llm", "path": "llm"},
                                                          {"name": "enc", "path": "enc"}]}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pressa", "serve", "--config", str(d / "models.json"),
                             "--executor", "ray", "--replicas", "2", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if json.loads(_get(url + "/v1/models"))["data"]:
                break
        except OSError:
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read()
    yield {"url": url, "port": port, "proc": proc, "enc": d / "enc"}
    if proc.poll() is None:
        proc.kill()


def test_ray_serve_replicas_answer_the_official_clients_and_both_serve(ray_server):
    openai = pytest.importorskip("openai")
    http = pytest.importorskip("tritonclient.http")
    from pressa.runtime.encoder import EncoderModel

    url = ray_server["url"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    assert {m.id for m in client.models.list()} == {"llm", "enc"}
    msgs = [{"role": "user", "content": "t5 t6 t7"}]
    full = client.chat.completions.create(model="llm", messages=msgs, max_tokens=6, temperature=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="llm", messages=msgs, max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == full.choices[0].message.content and full.usage.completion_tokens >= 1
    triton = http.InferenceServerClient(f"127.0.0.1:{ray_server['port']}")
    assert triton.is_server_live() and triton.is_model_ready("enc")
    enc = EncoderModel(ray_server["enc"])
    text = http.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(["a first sentence", "and a second one"], dtype=object))
    got = triton.infer("enc", [text]).as_numpy("last_hidden_state")
    np.testing.assert_allclose(got, enc.run(["a first sentence", "and a second one"])["last_hidden_state"],
                               atol=1e-5)
    seen: dict[str, int] = {}
    for _ in range(40):                          # the proxy spreads requests; /metrics comes from either
        client.completions.create(model="llm", prompt="t5 t6", max_tokens=2, temperature=0)
        seen.update(_replica_counts(url))
        if len(seen) == 2 and all(seen.values()):
            break
    assert len(seen) == 2 and all(n > 0 for n in seen.values()), seen


def test_sigterm_stops_the_deployment_cleanly(ray_server):
    proc = ray_server["proc"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopping" in out
