"""A normalized decoder config, read from a Hugging Face config.json (transformers 4 or 5 layout)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pressa.capture.architectures import ALIASES, Arch, get_arch
from pressa.errors import BadArgument


@dataclass
class Rope:
    theta: float = 10000.0
    kind: str = "default"               # default | linear | llama3 | longrope | dynamic
    params: dict = field(default_factory=dict)


@dataclass
class DecoderConfig:
    arch: Arch
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    max_position: int
    rope: Rope
    rotary_dim: int
    tie_embeddings: bool
    hidden_act: str
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    layer_sliding: list[bool] = field(default_factory=list)
    local_rope: Rope | None = None       # Gemma3: sliding layers use another rope base
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    attn_scale: float | None = None
    layer_rotary: list[bool] = field(default_factory=list)   # per layer: rotary applied (SmolLM3 skips some)
    embed_multiplier: float = 1.0        # Granite's multipliers: embeddings, each branch before the residual,
    residual_multiplier: float = 1.0     # and the logits (divided)
    logits_divisor: float = 1.0
    parallel: str = ""                   # attention and MLP in parallel: "shared norm" | "two norms"
    num_experts: int = 0                 # mixture of experts: experts per MoE layer, how many each token uses,
    experts_per_token: int = 0           # each expert's intermediate size, whether the top-k weights are
    expert_intermediate: int = 0         # renormalized, and which layers are MoE
    normalize_topk: bool = True
    layer_moe: list[bool] = field(default_factory=list)
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    raw: dict = field(default_factory=dict)


def _rope_from(d: dict | None, fallback_theta: float) -> Rope:
    if not d:
        return Rope(theta=fallback_theta)
    kind = d.get("rope_type", d.get("type", "default")) or "default"
    theta = float(d.get("rope_theta", fallback_theta))
    params = {k: v for k, v in d.items() if k not in ("rope_type", "type", "rope_theta")}
    return Rope(theta=theta, kind=kind, params=params)


def token_ids(v) -> list[int]:
    """A token id field of a config (None, one id, or a list) as a list."""
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, list) else [int(v)]


def _ropes(cfg: dict) -> tuple[Rope, Rope | None, float]:
    """(rotary of full-attention layers, of sliding layers when another, the rotary share of each head)."""
    rope_all = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    theta = float(cfg.get("rope_theta", 10000.0))
    local_rope = None
    if isinstance(rope_all, dict) and "full_attention" in rope_all:   # transformers 5, per layer type
        rope = _rope_from(rope_all["full_attention"], theta)
        local_rope = _rope_from(rope_all.get("sliding_attention"), theta)
    else:
        rope = _rope_from(rope_all if isinstance(rope_all, dict) else None, theta)
        if "rope_local_base_freq" in cfg:
            local_rope = Rope(theta=float(cfg["rope_local_base_freq"]))
    partial = float(cfg.get("partial_rotary_factor", (rope_all or {}).get("partial_rotary_factor", 1.0)
                            if isinstance(rope_all, dict) else 1.0))
    return rope, local_rope, partial


def _experts(arch: Arch, cfg: dict, n: int) -> dict:
    """The mixture-of-experts fields: every layer, or every decoder_sparse_step-th outside mlp_only_layers."""
    if not arch.moe:
        return {}
    step, dense = int(cfg.get("decoder_sparse_step") or 1), set(cfg.get("mlp_only_layers") or [])
    norm = cfg.get("norm_topk_prob")
    return dict(num_experts=int(cfg["num_experts"]), experts_per_token=int(cfg["num_experts_per_tok"]),
                expert_intermediate=int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"]),
                normalize_topk=arch.moe_normalize if norm is None else bool(norm),
                layer_moe=[i not in dense and (i + 1) % step == 0 for i in range(n)])


def decoder_config(cfg: dict) -> DecoderConfig:
    """Normalize a config.json dict. Raises UnsupportedArchitecture for models not in the table."""
    if "text_config" in cfg and cfg.get("model_type") in ALIASES:     # a multimodal config: its text model
        cfg = {**cfg["text_config"], "model_type": ALIASES[cfg["model_type"]]}
    model_type = cfg.get("model_type", "")
    arch = get_arch(model_type)
    raw, cfg = cfg, arch.config_view(cfg)
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        n = int(cfg["num_hidden_layers"])
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        rope, local_rope, partial = _ropes(cfg)
        act = arch.activation(cfg.get("hidden_activation") or cfg.get("hidden_act") or arch.default_act)
        qpas = cfg.get("query_pre_attn_scalar")
        attn_scale = float(qpas) ** -0.5 if qpas else cfg.get("attention_multiplier")
        tie = cfg.get("tie_word_embeddings")
        if tie is None:
            tie = arch.tie_default
        return DecoderConfig(
            arch=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size") or arch.mlp_ratio * hidden or cfg["intermediate_size"]),
            num_layers=n,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position=int(cfg.get("max_position_embeddings", 4096)),
            rope=rope,
            rotary_dim=int(head_dim * partial),
            tie_embeddings=bool(tie),
            hidden_act=act,
            attention_bias=bool(cfg.get("attention_bias", False)) or arch.qkv_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            sliding_window=cfg.get("sliding_window"),
            layer_sliding=arch.layer_sliding(cfg, n),
            local_rope=local_rope,
            attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
            final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
            attn_scale=float(attn_scale) if attn_scale else None,
            layer_rotary=arch.layer_rotary(cfg, n),
            embed_multiplier=float(cfg.get("embedding_multiplier") or 1.0),
            residual_multiplier=float(cfg.get("residual_multiplier") or 1.0),
            logits_divisor=float(cfg.get("logits_scaling") or 1.0) / float(cfg.get("logit_scale") or 1.0),
            parallel=arch.parallel if cfg.get("use_parallel_residual", True) else "",
            **_experts(arch, cfg, n),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=token_ids(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BadArgument(f"config.json is missing or has a bad value for {err}; check the model folder") from None
