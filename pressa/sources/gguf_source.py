"""A .gguf file: tensors dequantized one at a time, config and tokenizer rebuilt from its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pressa.capture.architectures import GGUF_ARCHITECTURES, GGUF_EXPERTS, Arch
from pressa.errors import CorruptModel, UnsupportedArchitecture
from pressa.sources.base import Source, WeightReader
from pressa.sources.gguf_tokenizer import field as _field
from pressa.sources.gguf_tokenizer import tokenizer_files


def _shape(t, expert: int | None) -> tuple:
    shape = tuple(int(d) for d in reversed(t.shape))
    return shape if expert is None else shape[1:]


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs back to rotate-half order)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_EPS = {"rms": "attention.layer_norm_rms_epsilon", "layer": "attention.layer_norm_epsilon"}


def _config(reader, row: Arch, arch: str, names: set[str], vocab: int) -> dict:
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
    heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    cfg = {
        "model_type": row.model_type,
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "head_dim": int(g("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(g(_EPS[row.norm]) or g(_EPS["layer" if row.norm == "rms" else "rms"], 1e-6)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "lm_head.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    cfg.update(row.gguf_defaults)
    rot = g("rope.dimension_count")
    if rot and int(rot) != cfg["head_dim"]:
        cfg["partial_rotary_factor"] = int(rot) / cfg["head_dim"]
    for k_gguf, k_hf in (("attention.sliding_window", "sliding_window"),
                         ("attn_logit_softcapping", "attn_logit_softcapping"),
                         ("final_logit_softcapping", "final_logit_softcapping"), ("expert_count", "num_experts"),
                         ("expert_used_count", "num_experts_per_tok"),
                         ("expert_feed_forward_length", "moe_intermediate_size"), *row.gguf_keys):
        if g(k_gguf) is not None:
            cfg[k_hf] = g(k_gguf)
    return cfg


def open_gguf(path: Path, kind: str = "gguf") -> Source:
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # gguf raises ValueError/struct errors/IndexError on damage
        raise CorruptModel(f"{path}: not a valid GGUF file ({type(err).__name__}: {err}); re-download it") from None
    arch = str(_field(reader, "general.architecture", ""))
    experts = int(_field(reader, f"{arch}.expert_count", 0) or 0)
    row = (GGUF_EXPERTS if experts else GGUF_ARCHITECTURES).get(arch)
    if row is None:
        raise UnsupportedArchitecture(
            f"GGUF architecture {arch!r}{' with experts' if experts else ''} is not supported; supported: "
            f"{', '.join(sorted(GGUF_ARCHITECTURES))} (with experts: {', '.join(sorted(GGUF_EXPERTS))})")
    names = row.gguf_names(int(_field(reader, f"{arch}.block_count", 0)))
    tensors = {}                 # pressa's name -> (GGUF tensor, expert index into a stacked one or None)
    for t in reader.tensors:
        base, _, suffix = t.name.rpartition(".")
        if base in names and "{e}" in names[base]:
            tensors.update({f"{names[base].format(e=e)}.{suffix}": (t, e) for e in range(experts)})
        elif base in names:
            tensors[f"{names[base]}.{suffix}"] = (t, None)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens is not None else int(tensors["model.embed_tokens.weight"][0].shape[-1])
    config = _config(reader, row, arch, set(tensors), vocab)
    permuted = row.gguf_permuted_qk
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    def read(name: str) -> np.ndarray:
        t, expert = tensors[name]
        try:
            data = t.data if expert is None else t.data[expert]
            w = gguf.quants.dequantize(data, t.tensor_type).astype(np.float32, copy=False)
        except Exception as err:
            raise CorruptModel(f"{path}: tensor {t.name} cannot be decoded ({err}); re-download the file") from None
        if permuted and name.endswith("q_proj.weight"):
            w = _unpermute(w, heads)
        elif permuted and name.endswith("k_proj.weight"):
            w = _unpermute(w, kv_heads)
        if row.norm_offset and "norm" in name:
            w = w - row.norm_offset          # llama.cpp stores Gemma's (1 + w); keep HF's layout
        return w

    files = tokenizer_files(reader, config["max_position_embeddings"])
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    files["generation_config.json"] = json.dumps(gen).encode()
    return Source(kind=kind, location=str(path), config=config,
                  weights=WeightReader(set(tensors), read, lambda n: _shape(*tensors[n])),
                  tokenizer_files=files, pressa_names=True)
