"""Every kind of source gives the same model: GGUF (with llama.cpp's q/k permutation), sharded bf16
safetensors, and a Hub id from the local cache; each checked against transformers' logits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pressa.capture.build_options import BuildOptions
from pressa.capture.llm import build_llm
from pressa.genai.decoder_session import DecoderSession

from conftest import BASE, hf_left_padded, load_hf, make_tiny, rng_rows
from gguf_files import LLAMA_CPP_ARCH, write_gguf


def check_against_hf(hf_dir, artifact):
    rows = rng_rows(4, lengths=(6, 3))
    ref, steps = hf_left_padded(load_hf(hf_dir), rows, [[5, 6]])
    s = DecoderSession(artifact, threads=1, all_logits=True)
    _, full = s.prefill(rows, capacity=10)
    for b, r in enumerate(rows):
        assert np.abs(full[b, : len(r)] - ref[b]).max() < 1e-4
    assert np.abs(s.step(np.array([5, 6])) - steps[0]).max() < 1e-4


def test_gguf_source_matches_transformers(tiny_dir, tmp_path):
    hf_dir = tiny_dir("llama")
    write_gguf(hf_dir, tmp_path / "tiny.gguf")
    build_llm(str(tmp_path / "tiny.gguf"), tmp_path / "out", BuildOptions(precision="fp32"))
    check_against_hf(hf_dir, tmp_path / "out")
    tok = (tmp_path / "out" / "tokenizer.json").read_text()
    assert '"<s>"' in tok and (tmp_path / "out" / "special_tokens_map.json").is_file()


# what llama.cpp's GGUF cannot say is set to what llama.cpp assumes for the family (Gemma's attention
# scale from the head size, SmolLM3's rotary-less layer every 4th, Gemma 3's pattern of 6)
GGUF_KINDS = {"qwen2": {}, "qwen3": {}, "phi3": {}, "gemma": {}, "gemma2": dict(query_pre_attn_scalar=16),
              "gemma3": dict(query_pre_attn_scalar=16, layer_types=None), "stablelm": {}, "granite": {},
              "cohere": dict(tie_word_embeddings=True), "olmo2": {}, "phi": {}, "gpt_neox": {},
              "gpt_neox-sequential": {},
              "smollm3": dict(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0]), "gpt2": dict(n_inner=None),
              "qwen3_moe": dict(mlp_only_layers=[], norm_topk_prob=True), "mixtral": {}}


@pytest.mark.parametrize("kind", sorted(GGUF_KINDS))
def test_every_gguf_architecture_matches_transformers(kind, tmp_path):
    hf_dir = make_tiny(kind, tmp_path / "hf", **GGUF_KINDS[kind])
    write_gguf(hf_dir, tmp_path / "tiny.gguf")
    build_llm(str(tmp_path / "tiny.gguf"), tmp_path / "out", BuildOptions(precision="fp32"))
    check_against_hf(hf_dir, tmp_path / "out")


def test_gguf_table_covers_llama_cpp_names():
    from pressa.capture.architectures import ARCHITECTURES

    assert {a.gguf_arch or a.model_type for a in ARCHITECTURES.values()} >= set(LLAMA_CPP_ARCH.values())


def test_sharded_bf16_safetensors(tmp_path):
    import torch

    src = make_tiny("qwen2", tmp_path / "fp32")
    model = load_hf(src).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16", max_shard_size="40KB")
    shutil.copy(src / "tokenizer.json", tmp_path / "bf16")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    build_llm(str(tmp_path / "bf16"), tmp_path / "out", BuildOptions(precision="fp32"))
    check_against_hf(tmp_path / "bf16", tmp_path / "out")       # reference: the same bf16 weights in fp32


def _fake_hub_cache(cache, repo, src):
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    shutil.copytree(src, snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_hub_id_from_local_cache_and_clear_offline_error(tiny_dir, tmp_path):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tiny-org/tiny-llama", tiny_dir("llama"))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "pressa", "auto-opt", "-m", "tiny-org/tiny-llama", "-o",
                         str(tmp_path / "out"), "--precision", "fp32"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    check_against_hf(tiny_dir("llama"), tmp_path / "out")
    bad = subprocess.run([sys.executable, "-m", "pressa", "auto-opt", "-m", "tiny-org/absent", "-o",
                          str(tmp_path / "out2")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not in the local Hugging Face cache" in bad.stderr
    assert not (tmp_path / "out2").exists()


def test_quantized_builds_stay_close_to_fp32(tiny_artifact):
    rows = rng_rows(6, lengths=(8,))
    ref = DecoderSession(tiny_artifact("llama", "fp32"), threads=1, all_logits=True).prefill(rows, 9)[1][0]
    spread = ref.std()
    for precision, tol in (("int8", 0.05), ("int4", 0.35), ("fp16", 0.01)):
        got = DecoderSession(tiny_artifact("llama", precision), threads=1, all_logits=True).prefill(rows, 9)[1][0]
        assert np.abs(got - ref).mean() / spread < tol, precision
    mixed = tiny_artifact("llama", "int4", ratio=0.5)
    import json

    bits = json.loads((mixed / "pressa.json").read_text())["mixed_precision"]
    assert sorted(set(bits.values())) == [4, 8]
    assert len(bits) == BASE["num_hidden_layers"] * 4 + 1 and "lm_head" in bits     # untied head counts too


CALIB_TEXT = "\n".join(" ".join(f"t{(i * 7 + j * 13) % 150 + 5}" for j in range(40)) for i in range(60))


def _calib_build(tiny_dir, out, **opts):
    build_llm(str(tiny_dir("llama")), out, BuildOptions(**opts), calibration_text=CALIB_TEXT,
              calibration_samples=16, calibration_seqlen=32)
    return out


def _logits(folder):
    rows = [[int(w[1:]) for w in line.split()[:24]] for line in CALIB_TEXT.splitlines()[1:5]]
    s = DecoderSession(folder, threads=1, all_logits=True)
    return np.concatenate([s.prefill([r], len(r))[1][0] for r in rows])


def test_gptq_int4_is_closer_to_fp32_than_rtn(tiny_dir, tiny_artifact, tmp_path):
    ref = _logits(tiny_artifact("llama", "fp32"))
    gptq = _calib_build(tiny_dir, tmp_path / "gptq", precision="int4", algorithm="gptq")
    assert np.mean((_logits(gptq) - ref) ** 2) < 0.9 * np.mean((_logits(tiny_artifact("llama", "int4")) - ref) ** 2)


def test_awq_folding_keeps_the_function(tiny_dir, tiny_artifact, tmp_path):
    """AWQ scales are folded into norm gammas, up rows and a Mul before o_proj: with 8-bit weights
    the network must stay as close to fp32 as plain 8-bit RTN is."""
    ref = _logits(tiny_artifact("llama", "fp32"))
    awq = _calib_build(tiny_dir, tmp_path / "awq8", precision="int8", algorithm="awq", accuracy_level=0)
    rtn = tiny_artifact("llama", "int8", accuracy_level=0)
    assert np.mean((_logits(awq) - ref) ** 2) < 1.5 * np.mean((_logits(rtn) - ref) ** 2)
    import json

    assert json.loads((awq / "pressa.json").read_text())["settings"]["algorithm"] == "awq"


def test_calibrated_algorithms_need_data(tiny_dir, tmp_path):
    from pressa.errors import BadArgument

    with pytest.raises(BadArgument, match="calibration-data"):
        build_llm(str(tiny_dir("llama")), tmp_path / "x", BuildOptions(precision="int4", algorithm="gptq"))
    assert not (tmp_path / "x").exists()


def test_a_tied_embedding_is_never_whole_in_float32(tmp_path):
    """The quantized tied embedding is read and quantized a few thousand rows at a time from safetensors:
    the build's peak allocation stays below the float32 embedding's own size (it was 4x above), and the
    chunked quantization is byte-identical to quantizing the whole weight."""
    import tracemalloc

    from pressa.quant.packing import matmulnbits_tensors, packed_by_rows
    from pressa.quant.rtn import quantize_rtn

    w = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    whole = matmulnbits_tensors(quantize_rtn(w, 4, 32, False, True))
    parts = packed_by_rows(lambda a, b: w[a:b], 1000, 4, 32, False, True, chunk=96)
    assert all(np.array_equal(whole[k], parts[k]) for k in whole)
    hf = make_tiny("llama", tmp_path / "hf", vocab_size=65536, tie_word_embeddings=True)
    tracemalloc.start()
    try:
        build_llm(str(hf), tmp_path / "out", BuildOptions(precision="int4"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 65536 * BASE["hidden_size"] * 4
