"""Causal LMs outside the architecture table (bloom, falcon) take the general path: the transformers model
exported with its KV cache through torch, then weight-only quantization; the artifact runs unchanged in
pressa's engine (a cache that grows by concatenation) and in onnxruntime-genai."""

from __future__ import annotations

import numpy as np
import pytest

from pressa.capture.build_options import BuildOptions
from pressa.capture.llm import build_llm
from pressa.genai.decoder_session import DecoderSession

from conftest import hf_left_padded, load_hf, rng_rows, write_tiny_tokenizer
from helpers import assert_user_error, genai_greedy, run_cli

OUTSIDE = {"bloom": dict(n_layer=2, n_head=4, hidden_size=64),
           "falcon": dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, new_decoder_architecture=False,
                          multi_query=True)}
PROMPT = [5, 9, 17, 33, 4, 70]


def make_outside(kind: str, folder):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(kind, vocab_size=160, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               initializer_range=0.15, **OUTSIDE[kind])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval().save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    cache = {}

    def get(kind: str, precision: str = "fp32"):
        if (kind, precision) not in cache:
            tmp = tmp_path_factory.mktemp(f"general-{kind}-{precision}")
            hf = make_outside(kind, tmp / "hf")
            build_llm(str(hf), tmp / "out", BuildOptions(precision=precision))
            cache[kind, precision] = (hf, tmp / "out")
        return cache[kind, precision]
    return get


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_general_path_logits_equal_transformers(kind, outside):
    """Two prompts of different lengths, then three decode steps through the cache, against transformers'
    left-padded run (pressa lays rows out right-padded, so positions and masks really are rebuilt)."""
    hf, out = outside(kind)
    rows, steps = rng_rows(4, lengths=(6, 3)), [[5, 6], [7, 8], [9, 10]]
    ref, ref_steps = hf_left_padded(load_hf(hf), rows, steps)
    s = DecoderSession(out, threads=1, all_logits=True)
    _, full = s.prefill(rows, capacity=12)
    for b, r in enumerate(rows):
        assert np.abs(full[b, : len(r)] - ref[b]).max() < 1e-4
    for tokens, want in zip(steps, ref_steps):
        assert np.abs(s.step(np.array(tokens)) - want).max() < 1e-4


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_general_path_greedy_equals_transformers_and_int4_is_coherent(kind, outside):
    import torch

    import pressa
    from pressa.genai.sampling import SamplingConfig

    hf_dir, out = outside(kind)
    hf = load_hf(hf_dir)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        want = hf.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False,
                           pad_token_id=0)[0, len(PROMPT):].tolist()
    cfg = SamplingConfig(max_new_tokens=8, ignore_eos=True)
    model = pressa.load(out)
    assert [int(t[0]) for t, _ in model.generate_ids([PROMPT], cfg)] == want
    # continuous batching: a second, shorter prompt alongside gives the first the same tokens
    both = list(model.generate_ids([PROMPT, PROMPT[:3]], cfg))
    assert [int(t[0]) for t, _ in both] == want
    _, q = outside(kind, "int4")
    import onnx

    graph = onnx.load(q / "model.onnx", load_external_data=False).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) >= 4 * 2        # every layer's linears
    ref, got = (DecoderSession(p, threads=1, all_logits=True).prefill([PROMPT], capacity=8)[1][0] for p in (out, q))
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.9                  # llama's int4 build: 0.94


def test_general_path_cli_says_so_once_and_generates(outside, tmp_path):
    hf, _ = outside("bloom")
    res = run_cli("auto-opt", "-m", str(hf), "-o", str(tmp_path / "out"), "--precision", "int4")
    assert res.returncode == 0, res.stderr
    said = (res.stdout + res.stderr).count("general path")
    assert said == 1, res.stdout + res.stderr
    gen = run_cli("generate", str(tmp_path / "out"), "t5 t6 t7", "--max-new-tokens", "4")
    assert gen.returncode == 0, gen.stderr


def test_onnxruntime_genai_runs_a_general_path_artifact(outside):
    pytest.importorskip("onnxruntime_genai")
    import pressa
    from pressa.genai.sampling import SamplingConfig

    _, out = outside("falcon")
    got = genai_greedy(out, PROMPT, 6)
    ours = [int(t[0]) for t, _ in pressa.load(out).generate_ids([PROMPT], SamplingConfig(max_new_tokens=6,
                                                                                         ignore_eos=True))]
    assert got == ours


def test_a_model_transformers_does_not_know_is_one_line(tmp_path):
    import json

    from safetensors.numpy import save_file

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "no_such_family", "hidden_size": 8}))
    save_file({"w": np.zeros((2, 2), np.float32)}, str(tmp_path / "m" / "model.safetensors"))
    res = run_cli("auto-opt", "-m", str(tmp_path / "m"), "-o", str(tmp_path / "out"))
    assert_user_error(res, "no_such_family")
    assert not (tmp_path / "out").exists()
