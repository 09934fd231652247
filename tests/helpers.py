"""What several test modules share: running the CLI, asserting a one-line user error, a server on a
free loopback port, HTTP calls to it, and a tiny random BERT. (Test modules never import each other.)"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

KEY = "s3cret"

WORDS = [f"w{i}" for i in range(90)]
SENTENCES = [" ".join(WORDS[(7 * i + j * 3) % 90] for j in range(8 + i % 9)) + " and more words here to pass forty"
             for i in range(40)]


def write_bert(folder, task="feature-extraction", seed=0, layers=2):
    """A tiny random BERT for `task` with a WordPiece tokenizer and sentence-transformers configs."""
    import torch
    from transformers import (
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        BertConfig,
        BertTokenizerFast,
    )

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "and", "more", "words", "here", "to", "pass", "forty",
             *WORDS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64,
                     num_labels=2 if task == "question-answering" else 3)
    cls = {"feature-extraction": AutoModel, "text-classification": AutoModelForSequenceClassification,
           "token-classification": AutoModelForTokenClassification,
           "question-answering": AutoModelForQuestionAnswering}[task]
    torch.manual_seed(seed)
    model = cls.from_config(cfg).eval()
    with torch.no_grad():                 # biases and norms away from 0 / 1 so that they are really tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def run_cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pressa", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def assert_user_error(res, *fragments):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(".pressa-tmp-")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(models, http="auto", **options):
    """uvicorn on 127.0.0.1, a free port, in a thread; yields the port. `http`: uvicorn's protocol
    (the CLI's, with its header time limit: pressa.serve.middleware.header_timeout_protocol)."""
    import uvicorn

    from pressa.serve.app import create_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(models, KEY, **options), host="127.0.0.1", port=port,
                                        log_level="error", http=http))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        t.join(10)


def message(answer: dict) -> str:
    """An error's text: {"error": text}, or OpenAI's {"error": {"message": text, ...}}."""
    err = answer["error"]
    return err if isinstance(err, str) else err["message"]


def call(server, path, body=None, key=KEY, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server["url"] + path, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get("content-type", "").startswith("application/json")
                              else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def genai_greedy(folder, prompt: list[int], new_tokens: int) -> list[int]:
    """onnxruntime-genai's greedy tokens for `prompt` from the artifact `folder`."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False,
                              min_length=len(prompt) + new_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(prompt, dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    return got


def outlier_layer(seed=0, n=96, k=256, rows=4096):
    """Correlated inputs with a few large-magnitude channels, as LLM activations have."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 48)) @ rng.standard_normal((48, k)) + 0.1 * rng.standard_normal((rows, k))
    x[:, rng.choice(k, 5, replace=False)] *= 20
    w = rng.standard_normal((n, k)) * 0.05
    return x.astype(np.float32), w.astype(np.float32)


def output_error(x, w, wq):
    d = x @ (wq - w).T
    return float((d * d).mean())
