"""Tiny random decoder models built in the test from transformers configs, and helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 160

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.15,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# one config per supported architecture; windows small enough for the tests' prompts to cross them
ARCH_CONFIGS = {
    "llama": dict(model_type="llama", rope_theta=10000.0),
    "llama3-rope": dict(model_type="llama", rope_theta=500000.0, tie_word_embeddings=True,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": dict(model_type="mistral", sliding_window=5, head_dim=16),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", head_dim=32),
    "phi3": dict(model_type="phi3", num_key_value_heads=4, pad_token_id=0),
    "gemma": dict(model_type="gemma", head_dim=16, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True),
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                   attn_logit_softcapping=5.0, final_logit_softcapping=3.0, tie_word_embeddings=True),
    "gemma3": dict(model_type="gemma3_text", head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                   rope_theta=1000000.0, rope_local_base_freq=10000.0, tie_word_embeddings=True),
    "smollm3": dict(model_type="smollm3", no_rope_layers=[1, 0, 1], tie_word_embeddings=True),
    "stablelm": dict(model_type="stablelm", partial_rotary_factor=0.5, use_qkv_bias=True, layer_norm_eps=1e-5,
                     num_attention_heads=2, num_key_value_heads=2),      # rotary 16 of 32 dims
    "granite": dict(model_type="granite", embedding_multiplier=2.0, residual_multiplier=0.5,
                    attention_multiplier=0.1, logits_scaling=4.0),
    "phi": dict(model_type="phi", partial_rotary_factor=0.5, num_attention_heads=2, num_key_value_heads=2,
                layer_norm_eps=1e-5, hidden_act="gelu_new"),
    "gpt_neox": dict(model_type="gpt_neox", rotary_pct=0.5, num_attention_heads=2, num_key_value_heads=2,
                     layer_norm_eps=1e-5, hidden_act="gelu"),
    "gpt_neox-sequential": dict(model_type="gpt_neox", rotary_pct=0.5, num_attention_heads=2, num_key_value_heads=2,
                                use_parallel_residual=False, hidden_act="gelu"),
    "olmo2": dict(model_type="olmo2"),
    "cohere": dict(model_type="cohere", logit_scale=0.25, layer_norm_eps=1e-5),
    # mixture of experts: one dense layer (mlp_only_layers), top-k weights not renormalized; Mixtral renormalizes
    "qwen3_moe": dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      mlp_only_layers=[1], norm_topk_prob=False),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, intermediate_size=64),
    # DialoGPT's family: learned positions, LayerNorm with bias, Conv1D weights, tanh GELU, tied head
    "gpt2": dict(model_type="gpt2", n_inner=96, num_key_value_heads=4, activation_function="gelu_new",
                 layer_norm_epsilon=1e-5, tie_word_embeddings=True),
}


def make_tiny(kind: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a random transformers model of `kind` (a key of ARCH_CONFIGS, config entries replaced by
    `overrides`) to `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = {**BASE, **ARCH_CONFIGS[kind], **overrides}
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **spec)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():          # norms away from 1 so that norm handling is really tested
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if model_type.startswith("gemma") else 1.0))
    model.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return folder


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level-ish word tokenizer for the tiny vocab, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, VOCAB):
        vocab[f"t{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "chat_template": "{% for m in messages %}t10 {{ m['content'] }} t11 {% endfor %}"
                         "{% if add_generation_prompt %}t12{% endif %}"}))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte -> the character standing for it in the vocabulary."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# a template that renders tools, calls and results the way Qwen's does (hermes <tool_call> blocks)
TOOLS_TEMPLATE = (
    "{% if tools %}<system>Tools:{% for t in tools %} {{ t['function'] | tojson }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'tool' %}<tool>{{ m['content'] }}\n"
    "{% elif m.get('tool_calls') %}<assistant>{% for c in m['tool_calls'] %}<tool_call>\n"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}\n</tool_call>"
    "{% endfor %}\n{% else %}<{{ m['role'] }}>{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}")


def write_byte_tokenizer(folder: Path, template: str = TOOLS_TEMPLATE) -> None:
    """A byte-level BPE without merges: ids 3..258 are the 256 bytes, so any text has a spelling."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for b, ch in sorted(bytes_to_unicode().items()):
        vocab[ch] = 3 + b
    tok = Tokenizer(models.BPE(vocab, [], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": template}))


@pytest.fixture(scope="session")
def byte_llm(tmp_path_factory):
    """An fp32 tiny llama whose byte-level vocabulary spells any text (JSON, tool calls), with a chat
    template that renders tools."""
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm

    d = tmp_path_factory.mktemp("bytes")
    make_tiny("llama", d / "hf", vocab_size=272, max_position_embeddings=2048)
    write_byte_tokenizer(d / "hf")
    build_llm(str(d / "hf"), d / "llm", BuildOptions(precision="fp32"))
    return d / "llm"


@pytest.fixture(scope="session")
def byte_server(byte_llm):
    """A running server over byte_llm, named "bytes"."""
    from pressa.serve.models import load_models

    from helpers import running

    models = load_models([{"name": "bytes", "path": str(byte_llm), "max_concurrency": 4}])
    with running(models, max_tokens=512) as port:
        yield {"url": f"http://127.0.0.1:{port}"}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_tiny(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny_artifact(tiny_dir, tmp_path_factory):
    cache = {}

    def get(kind: str, precision: str = "fp32", **opts) -> Path:
        key = (kind, precision, tuple(sorted(opts.items())))
        if key not in cache:
            from pressa.capture.build_options import BuildOptions
            from pressa.capture.llm import build_llm

            out = tmp_path_factory.mktemp(f"art-{kind}-{precision}") / "model"
            ratio = opts.pop("ratio", 1.0)
            build_llm(str(tiny_dir(kind)), out, BuildOptions(precision=precision, **opts), ratio=ratio)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A LoRA adapter (r=16) trained on finetune_data's mapping over a tiny llama: (hf folder, adapter, manifest)."""
    pytest.importorskip("peft")
    from finetune_data import TEMPLATE, mapping_records, write_jsonl

    from pressa.finetune.data import DataOptions
    from pressa.finetune.run import finetune
    from pressa.finetune.train import LoraOptions

    tmp = tmp_path_factory.mktemp("finetune")
    hf = make_tiny("llama", tmp / "hf")
    data = write_jsonl(tmp / "train.jsonl", mapping_records(240, 0))
    manifest = finetune(str(hf), DataOptions(data_files=str(data), text_template=TEMPLATE, eval_share=0.1),
                        LoraOptions(lora_r=16, lora_alpha=32, max_steps=200, learning_rate=3e-3, batch_size=8),
                        tmp / "adapter")
    return hf, tmp / "adapter", manifest


def hf_left_padded(model, rows: list[list[int]], steps: list[list[int]]):
    """transformers logits for left-padded rows: (prefill logits per row [L_b, V], decode logits per step [B, V])."""
    import torch

    s = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), s), dtype=torch.long)
    mask = torch.zeros((len(rows), s), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, s - len(r):] = torch.tensor(r)
        mask[b, s - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        prefill = [out.logits[b, s - len(r):].numpy() for b, r in enumerate(rows)]
        past, decoded = out.past_key_values, []
        for toks in steps:
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=torch.tensor(toks)[:, None], attention_mask=mask, position_ids=pos,
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
            decoded.append(out.logits[:, -1].numpy())
    return prefill, decoded


def load_hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()


def rng_rows(seed: int = 0, lengths=(7, 4)) -> list[list[int]]:
    r = np.random.default_rng(seed)
    return [r.integers(3, VOCAB, n).tolist() for n in lengths]


@pytest.fixture(scope="session")
def server(tiny_artifact, tmp_path_factory):
    """A running server (the test_serve* modules) over a text encoder, a long-context fp32 LLM and a
    small int4 LLM."""
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm
    from pressa.serve.models import load_models

    from helpers import run_cli, running, write_bert

    d = tmp_path_factory.mktemp("serve")
    assert run_cli("capture", "--model", write_bert(d / "hf"), "-o", d / "enc").returncode == 0
    # a long context (generations that outlast a client) and fp32 (a row's logits do not depend on
    # the rows decoded beside it, so concurrent answers can be compared with solo ones exactly)
    make_tiny("llama", d / "hf-llm", max_position_embeddings=4096)
    build_llm(str(d / "hf-llm"), d / "llm", BuildOptions(precision="fp32"))
    models = load_models([{"name": "llm", "path": str(d / "llm"), "max_concurrency": 4},
                          {"name": "small", "path": str(tiny_artifact("llama", "int4"))},
                          {"name": "enc", "path": str(d / "enc"), "max_wait_ms": 50}])
    with running(models, max_tokens=4000) as port:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "enc": d / "enc", "llm": d / "llm", "models": models}
