"""GGUF files written in the test the way llama.cpp's converter writes them: gguf-py's writer and its
tensor-name map (gguf.TensorNameMap, independent of pressa's roles table), and the converter's per-family
tensor changes written here from its description (convert_hf_to_gguf.py)."""

from __future__ import annotations

import re

import numpy as np

from conftest import load_hf

# transformers model_type -> llama.cpp's general.architecture
LLAMA_CPP_ARCH = {
    "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma": "gemma", "gemma2": "gemma2",
    "gemma3_text": "gemma3", "smollm3": "smollm3", "stablelm": "stablelm", "granite": "granite",
    "cohere": "command-r", "olmo2": "olmo2", "phi": "phi2", "gpt_neox": "gptneox", "gpt2": "gpt2",
    "qwen3_moe": "qwen3moe", "mixtral": "llama",
}
# the converter's LlamaModel lineage reorders q/k rows for llama.cpp's interleaved rotary
PERMUTED = {"llama", "granite", "smollm3"}
EXPERT = re.compile(r"(.*\.experts)\.(\d+)\.(\w+)\.weight$")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The permutation llama.cpp's converter applies to q/k rows (written from its description)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _converted(name: str, t: np.ndarray, cfg, arch: str) -> np.ndarray:
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if arch in PERMUTED and name.endswith("q_proj.weight"):
        return llama_cpp_permute(t, heads)
    if arch in PERMUTED and name.endswith("k_proj.weight"):
        return llama_cpp_permute(t, kv)
    if arch.startswith("gemma") and name.endswith("norm.weight"):
        return t + 1.0                                     # llama.cpp stores Gemma's norms as 1 + w
    if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        return t.T                                         # Conv1D [in, out] -> [out, in]
    if arch == "gptneox" and "query_key_value" in name:   # per-head [q, k, v] -> [q; k; v]
        return t.reshape(heads, 3, -1, *t.shape[1:]).swapaxes(0, 1).reshape(t.shape)
    return t


def _metadata(w, cfg, arch: str) -> None:
    get = lambda *keys: next((getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None), None)  # noqa: E731
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = get("head_dim") or hidden // heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(get("intermediate_size", "n_inner") or 4 * hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(get("num_key_value_heads") or heads)
    if head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if get("rms_norm_eps") is not None:
        w.add_layer_norm_rms_eps(get("rms_norm_eps"))
    if get("layer_norm_eps", "layer_norm_epsilon") is not None:
        w.add_layer_norm_eps(get("layer_norm_eps", "layer_norm_epsilon"))
    rope = get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)            # transformers 5: per layer type (Gemma 3)
    if get("rope_theta") or rope.get("rope_theta"):
        w.add_rope_freq_base(float(get("rope_theta") or rope["rope_theta"]))
    partial = get("partial_rotary_factor", "rotary_pct") or rope.get("partial_rotary_factor")
    if partial:
        w.add_rope_dimension_count(int(head_dim * partial))
    if get("sliding_window"):
        w.add_sliding_window(get("sliding_window"))
    for key, add in (("attn_logit_softcapping", w.add_attn_logit_softcapping),
                     ("final_logit_softcapping", w.add_final_logit_softcapping),
                     ("attention_multiplier", w.add_attention_scale), ("embedding_multiplier", w.add_embedding_scale),
                     ("residual_multiplier", w.add_residual_scale), ("logits_scaling", w.add_logit_scale),
                     ("logit_scale", w.add_logit_scale), ("use_parallel_residual", w.add_parallel_residual),
                     ("num_local_experts", w.add_expert_count), ("num_experts", w.add_expert_count),
                     ("num_experts_per_tok", w.add_expert_used_count),
                     ("moe_intermediate_size", w.add_expert_feed_forward_length)):
        if get(key) is not None:
            add(get(key))


def _word_vocab(w, vocab_size: int) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<pad>", "<s>", "</s>"] + [chr(0x100 + i) for i in range(vocab_size - 3)])
    w.add_token_types([3, 3, 3] + [1] * (vocab_size - 3))
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _experts_stacked(state: dict) -> dict:
    """The converter's merge of experts.{e}.NAME.weight into one experts.NAME.weight [experts, out, in]."""
    import torch

    out, groups = {}, {}
    for name, t in state.items():
        m = EXPERT.match(name)
        if m:
            groups.setdefault(f"{m[1]}.{m[3]}.weight", {})[int(m[2])] = t
        else:
            out[name] = t
    return {**out, **{n: torch.stack([g[e] for e in sorted(g)]) for n, g in groups.items()}}


def write_gguf(hf_dir, path, vocab=None) -> None:
    """The tiny transformers model in `hf_dir` as llama.cpp's converter would write it (fp32 tensors).
    `vocab(writer)` writes the tokenizer metadata (default: a byte-level list the size of the vocab)."""
    import gguf
    import torch

    model = load_hf(hf_dir)
    cfg = model.config
    arch = LLAMA_CPP_ARCH[cfg.model_type]
    enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(enum, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    _metadata(w, cfg, arch)
    (vocab or (lambda wr: _word_vocab(wr, cfg.vocab_size)))(w)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    from safetensors.torch import load_file

    checkpoint = load_file(str(hf_dir / "model.safetensors"))       # the names on disk, as the converter reads
    for name, t in _experts_stacked(checkpoint).items():
        if tied and name == "lm_head.weight":
            continue
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname, f"gguf-py has no name for {name}"
        t = _converted(name, t.detach().to(torch.float32).numpy(), cfg, arch)
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
