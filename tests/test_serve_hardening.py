"""The server against hostile and careless clients: strings that are not Unicode, deep nesting, huge
numbers, bodies that never arrive, headers that trickle, clients that leave early, and sampling fields
out of range. Never a 5xx, every error JSON; slow clients are cut off; /metrics is behind the key.
Also logprobs, checked against transformers' own log-softmax."""

from __future__ import annotations

import collections
import json
import socket
import time
import urllib.request

import numpy as np
import pytest

from conftest import load_hf
from helpers import KEY, call, message, running, write_bert

HOSTILE = '"\\ud800"'          # JSON for a lone UTF-16 surrogate: valid JSON, not Unicode text


@pytest.fixture(scope="module")
def server(tiny_artifact, tiny_dir, tmp_path_factory):
    from pressa.passes.base import apply_pass
    from pressa.serve.middleware import header_timeout_protocol
    from pressa.serve.models import load_models

    d = tmp_path_factory.mktemp("serve-hardening")
    apply_pass("capture", str(write_bert(d / "hf")), d / "enc", {"task": "feature-extraction"})
    models = load_models([{"name": "llm", "path": str(tiny_artifact("llama"))},
                          {"name": "enc", "path": str(d / "enc")}])
    with running(models, http=header_timeout_protocol(1.0), body_timeout=1.0, max_tokens=64) as port:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "models": models, "hf": tiny_dir("llama"),
               "enc": d / "enc"}


ROUTES = {
    "/v1/chat/completions": '{"model": "llm", "max_tokens": 2, "messages": [{"role": "user", "content": %s}]}',
    "/v1/completions": '{"model": "llm", "max_tokens": 2, "prompt": %s}',
    "/v1/embeddings": '{"model": "enc", "input": [%s]}',
    "/v1/models/enc:predict": '{"instances": [%s]}',
    "/v1/models/llm:predict": '{"instances": [%s], "parameters": {"max_tokens": 2}}',
    "/v2/models/enc/infer": '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [%s]}]}',
}


@pytest.mark.parametrize("path", list(ROUTES))
def test_lone_surrogate_is_400_on_every_route(server, path):
    status, body = call(server, path, raw=(ROUTES[path] % HOSTILE).encode())
    assert status == 400 and "surrogate" in message(body), body
    status, body = call(server, path, raw=(ROUTES[path] % '"\\ud83c\\udf89 party"').encode())     # a real pair
    assert status == 200, body


def test_hostile_bodies_fuzz_finds_no_5xx(server):
    """Generated bodies on every POST route: strings with surrogates and control characters, huge and
    non-finite numbers, deep nesting, wrong types in every slot. Every answer below 500, errors JSON."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.text(st.characters(codec=None, categories=["Cs", "Cc", "L", "N", "So"]), max_size=12)
    leaf = st.one_of(st.none(), st.booleans(), text, st.floats(allow_nan=True, allow_infinity=True),
                     st.integers(-(10 ** 300), 10 ** 300))
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                         max_leaves=8)
    seen: collections.Counter = collections.Counter()

    def send(path: str, raw: bytes) -> None:
        status, body = call(server, path, raw=raw)
        seen[status // 100 * 100] += 1
        assert status < 500, (path, raw[:200], body)
        if status >= 400:
            assert isinstance(message(body), str), body

    @given(path=st.sampled_from(list(ROUTES)), filler=value)
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(path, filler):
        send(path, (ROUTES[path] % json.dumps(filler)).encode())            # ensure_ascii: surrogates as \\uXXXX
        send(path, json.dumps({"model": filler, "prompt": filler, "messages": filler, "inputs": filler,
                               "instances": filler, "max_tokens": filler, "logprobs": filler}).encode())

    fuzz()
    for path in ROUTES:
        send(path, b"[" * 100_000 + b"]" * 100_000)                       # nesting past Python's recursion limit
        send(path, (ROUTES[path] % ("1" + "0" * 5000)).encode())           # an integer past int()'s digit limit
        send(path, (ROUTES[path] % "1e999").encode())
    print(f"hostile-body fuzz: {sum(seen.values())} requests, {dict(seen)}")
    assert seen[200] > 0 and seen[400] > 0 and not seen[500]


def _slow_client(port: int, headers_only: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    if headers_only:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")              # the headers never end
    else:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo".encode())
    return s


def test_slow_clients_are_cut_off_and_others_still_served(server):
    """50 bodies that never arrive get 408 and a closed connection after --body-timeout; 50 trickling
    header blocks are closed after --header-timeout; meanwhile a normal request is answered."""
    t0 = time.perf_counter()
    bodies = [_slow_client(server["port"], False) for _ in range(50)]
    heads = [_slow_client(server["port"], True) for _ in range(50)]
    status, _ = call(server, "/v1/models")
    assert status == 200
    for s in bodies:
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer, answer[:200]
        s.close()
    for s in heads:
        assert s.recv(4096) == b""                      # closed without an answer
        s.close()
    assert time.perf_counter() - t0 < 8


def test_client_leaving_mid_body_is_not_a_server_error(server):
    for _ in range(3):
        s = _slow_client(server["port"], False)
        s.close()
    time.sleep(0.5)
    _, metrics = call(server, "/metrics")
    lines = [ln for ln in metrics.splitlines() if ln.startswith('pressa_requests_total{route="/v1/completions"')]
    assert any('code="499"' in ln for ln in lines) and not any('code="500"' in ln for ln in lines), lines


def test_metrics_need_the_key_unless_public(server):
    status, body = call(server, "/metrics", key=None)
    assert status == 401 and "API key" in body["error"]
    from pressa.serve.models import load_models

    # a server of its own (its shutdown closes its models' schedulers): an encoder is enough
    with running(load_models([{"name": "enc", "path": str(server["enc"])}]), metrics_public=True) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200 and b"pressa_requests_total" in r.read()


@pytest.mark.parametrize("change,fragment", [
    ({"model": None}, "model: missing"),
    ({"max_tokens": True}, "max_tokens must be an integer"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer"),
    ({"top_k": -5}, "top_k"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 1e-310}, "repetition_penalty"),        # subnormal: logits / penalty overflow
    ({"temperature": True}, "temperature"),
    ({"echo": True}, "echo is not supported"),
    ({"best_of": 3}, "best_of is not supported"),
    ({"suffix": "end"}, "suffix is not supported"),
    ({"logprobs": 9}, "logprobs"),
])
def test_sampling_fields_are_checked(server, change, fragment):
    body = {k: v for k, v in {"model": "llm", "prompt": "t5 t6", "max_tokens": 2, **change}.items() if v is not None}
    status, answer = call(server, "/v1/completions", body)
    assert status == 400 and fragment in message(answer), answer


def test_empty_body_is_400_naming_the_model_field(server):
    status, answer = call(server, "/v1/chat/completions", raw=b"")
    assert status == 400 and "model" in message(answer), answer


def _reference_logprobs(hf_folder, prompt_ids: list[int], steps: int, top: int):
    """Greedy continuation by transformers: the chosen ids, their log-probabilities, the top ids."""
    import torch

    model = load_hf(hf_folder)
    ids, chosen, lps, tops = list(prompt_ids), [], [], []
    with torch.no_grad():
        for _ in range(steps):
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy()
            t = int(logp.argmax())
            chosen.append(t)
            lps.append(float(logp[t]))
            tops.append([int(i) for i in np.argsort(-logp)[:top]])
            ids.append(t)
    return chosen, lps, tops, logp


def test_logprobs_match_transformers(server):
    """Completions (logprobs: 2) and chat (logprobs + top_logprobs: 2), greedy, against transformers'
    log-softmax of the same tiny model; streamed chunks carry the same records."""
    tok = server["models"]["llm"].model
    prompt = "t5 t6 t7"
    ids = tok.encode_prompt(prompt, chat=False)
    chosen, lps, tops, _ = _reference_logprobs(server["hf"], ids, 4, 2)
    req = {"model": "llm", "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 2, "ignore_eos": True}
    status, answer = call(server, "/v1/completions", req)
    assert status == 200, answer
    lp = answer["choices"][0]["logprobs"]
    assert lp["tokens"] == [f"t{i}" for i in chosen]
    np.testing.assert_allclose(lp["token_logprobs"], lps, atol=2e-4)
    assert [list(d) for d in lp["top_logprobs"]] == [[f"t{i}" for i in row] for row in tops]
    assert lp["text_offset"][0] == 0 and all(b > a for a, b in zip(lp["text_offset"], lp["text_offset"][1:]))

    chat_ids = tok.encode_prompt([{"role": "user", "content": prompt}])
    chosen, lps, tops, _ = _reference_logprobs(server["hf"], chat_ids, 3, 2)
    req = {"model": "llm", "messages": [{"role": "user", "content": prompt}], "max_tokens": 3, "temperature": 0,
           "logprobs": True, "top_logprobs": 2, "ignore_eos": True}
    status, answer = call(server, "/v1/chat/completions", req)
    content = answer["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == [f"t{i}" for i in chosen]
    assert [c["bytes"] for c in content] == [list(f"t{i}".encode()) for i in chosen]
    np.testing.assert_allclose([c["logprob"] for c in content], lps, atol=2e-4)
    assert [[a["token"] for a in c["top_logprobs"]] for c in content] == [[f"t{i}" for i in r] for r in tops]

    data = json.dumps({**req, "stream": True}).encode()
    r = urllib.request.Request(server["url"] + "/v1/chat/completions", data=data,
                               headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    streamed = []
    with urllib.request.urlopen(r) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    streamed += (c.get("logprobs") or {}).get("content", [])
    assert streamed == content
