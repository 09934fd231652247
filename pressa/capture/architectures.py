"""Supported decoder architectures, one table row each: how a model differs from plain Llama.

Adding an architecture is adding a row (and, at most, one small emitter for a new feature).
Tensor names are Hugging Face's, relative to `model.layers.{i}.`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pressa.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Arch:
    model_type: str
    genai_type: str                      # onnxruntime-genai's "type" field
    norm_offset: float = 0.0             # Gemma stores RMSNorm gamma as (w - 1)
    embed_scale: bool = False            # Gemma multiplies embeddings by sqrt(hidden)
    qk_norm: bool = False                # per-head RMSNorm on q and k before rotary (Qwen3, Gemma3)
    sandwich_norm: bool = False          # extra norms after attention and MLP (Gemma2/3)
    qkv_bias: bool = False               # bias on q/k/v projections regardless of config (Qwen2)
    fused_qkv: str | None = None         # one tensor for q,k,v (Phi3: qkv_proj)
    fused_gate_up: str | None = None     # one tensor for gate,up (Phi3: gate_up_proj)
    mlp_norm: str = "post_attention_layernorm"
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    default_act: str = "silu"


_SANDWICH = dict(
    sandwich_norm=True, mlp_norm="pre_feedforward_layernorm",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
)

ARCHITECTURES: dict[str, Arch] = {a.model_type: a for a in [
    Arch("llama", "llama"),
    Arch("mistral", "mistral"),
    Arch("qwen2", "qwen2", qkv_bias=True),
    Arch("qwen3", "qwen3", qk_norm=True),
    Arch("phi3", "phi3", fused_qkv="qkv_proj", fused_gate_up="gate_up_proj"),
    Arch("gemma", "gemma", norm_offset=1.0, embed_scale=True, default_act="gelu_pytorch_tanh"),
    Arch("gemma2", "gemma2", norm_offset=1.0, embed_scale=True, default_act="gelu_pytorch_tanh", **_SANDWICH),
    Arch("gemma3_text", "gemma3_text", norm_offset=1.0, embed_scale=True, qk_norm=True,
         default_act="gelu_pytorch_tanh", **_SANDWICH),
]}

# Names a config may carry for the same row.
ALIASES = {"gemma3": "gemma3_text"}


def get_arch(model_type: str) -> Arch:
    key = ALIASES.get(model_type, model_type)
    if key not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} is not supported; supported decoder architectures: {supported}"
        )
    return ARCHITECTURES[key]
