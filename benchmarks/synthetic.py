"""Synthetic checkpoints with the exact shapes and configs of the models our users ship, for time and memory
figures (random weights: never for accuracy).

    python benchmarks/synthetic.py qwen2.5-0.5b [llama-3.2-1b qwen2.5-1.5b qwen3-8b] [--out DIR]

Each is a Hugging Face folder: config.json as the Hub's, bf16 safetensors sharded as the Hub shards them
(with model.safetensors.index.json when sharded), weights drawn at the real models' scale (linears and
embeddings N(0, 0.02), norms 1), written tensor by tensor (memory stays one tensor). The tokenizer and chat
template are SmolLM2's (the one pressa has locally), so prompts use its 49,152 ids of the larger vocabulary.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

GB = 1 << 30
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, sliding_window=32768, use_sliding_window=False,
                         bos_token_id=151643, eos_token_id=151645, hidden_act="silu", shard_gb=0),
    "llama-3.2-1b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000,
                         eos_token_id=[128001, 128008, 128009], hidden_act="silu", shard_gb=0),
    "qwen2.5-1.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=1536,
                         intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, sliding_window=32768, use_sliding_window=False,
                         bos_token_id=151643, eos_token_id=151645, hidden_act="silu", shard_gb=0),
    "qwen3-8b": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=4096,
                     intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
                     hidden_act="silu", shard_gb=4),
}


def tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The checkpoint's tensor names and shapes, in the Hub's order."""
    h, n_h, n_kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // n_h
    inter = cfg["intermediate_size"]
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (n_h * d, h)), (p + "self_attn.k_proj.weight", (n_kv * d, h)),
                (p + "self_attn.v_proj.weight", (n_kv * d, h)), (p + "self_attn.o_proj.weight", (h, n_h * d)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter))]
        if cfg["model_type"] == "qwen2":
            out += [(p + f"self_attn.{x}_proj.bias", (s,)) for x, s in (("q", n_h * d), ("k", n_kv * d),
                                                                        ("v", n_kv * d))]
        if cfg["model_type"] == "qwen3":
            out += [(p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,))]
    out.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (cfg["vocab_size"], h)))
    return out


def bf16_bytes(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> bytes:
    """Weights at the real models' scale, rounded to bf16 (the upper half of float32, to nearest)."""
    if name.endswith("norm.weight"):
        x = np.ones(shape, np.float32)
    else:
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def write_shard(path: Path, items: list[tuple[str, tuple[int, ...]]], rng) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in items:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in items:
            f.write(bf16_bytes(name, shape, rng))


def write_checkpoint(shape: str, folder: Path) -> Path:
    from pressa.sources import open_source

    cfg = dict(SHAPES[shape])
    shard_gb = cfg.pop("shard_gb")
    folder.mkdir(parents=True, exist_ok=True)
    items = tensors(cfg)
    shards, cur, size = [], [], 0
    for name, shp in items:
        nbytes = int(np.prod(shp)) * 2
        if shard_gb and cur and size + nbytes > shard_gb * GB:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shp))
        size += nbytes
    shards.append(cur)
    rng = np.random.default_rng(0)
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for fname, part in zip(names, shards):
        write_shard(folder / fname, part, rng)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(int(np.prod(s)) * 2 for _, s in items)},
                 "weight_map": {n: f for f, part in zip(names, shards) for n, _ in part}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}, indent=1))
    for name, data in open_source(None).tokenizer_files.items():
        if name != "generation_config.json":
            (folder / name).write_bytes(data)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": cfg["bos_token_id"],
                                                                "eos_token_id": cfg["eos_token_id"]}))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="+", choices=sorted(SHAPES))
    ap.add_argument("--out", type=Path, default=Path("synthetic"))
    a = ap.parse_args()
    for s in a.shapes:
        t0 = time.perf_counter()
        folder = write_checkpoint(s, a.out / s)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / GB
        print(f"{s}: {folder} ({size:.2f} GiB bf16, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
