"""Tensor roles: every weight a decoder can have, named once, each source's spelling a column (as
llama.cpp's gguf-py tensor_mapping.py keeps them).

Column `pressa` is the name the builder reads: Llama's Hugging Face name (per layer, relative to
`model.layers.{i}.`). Column `gguf` is llama.cpp's (per layer, relative to `blk.{i}.`). A family whose
Hugging Face checkpoints spell a role otherwise says so in its row (Arch.hf_names); a row renames the
three norms around attention and MLP through its fields (Gemma 2's pre-feedforward norm is GGUF's
ffn_norm).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    pressa: str
    gguf: str
    layer: bool = True

    def full(self, i: int | str = "{i}") -> str:
        return f"model.layers.{i}.{self.pressa}" if self.layer else self.pressa

    @property
    def per_expert(self) -> bool:
        return "{e}" in self.pressa


ROLES: dict[str, Role] = {
    "embed": Role("model.embed_tokens", "token_embd", layer=False),
    "positions": Role("model.embed_positions", "position_embd", layer=False),   # learned absolute (GPT-2)
    "final_norm": Role("model.norm", "output_norm", layer=False),
    "head": Role("lm_head", "output", layer=False),
    "attn_norm": Role("input_layernorm", "attn_norm"),
    "q": Role("self_attn.q_proj", "attn_q"),
    "k": Role("self_attn.k_proj", "attn_k"),
    "v": Role("self_attn.v_proj", "attn_v"),
    "qkv": Role("self_attn.qkv_proj", "attn_qkv"),          # fused, rows [q; k; v]
    "o": Role("self_attn.o_proj", "attn_output"),
    "q_norm": Role("self_attn.q_norm", "attn_q_norm"),
    "k_norm": Role("self_attn.k_norm", "attn_k_norm"),
    "mlp_norm": Role("post_attention_layernorm", "ffn_norm"),            # the norm before the MLP
    "post_attn_norm": Role("post_attention_layernorm", "post_attention_norm"),   # after attention (Gemma 2, OLMo 2)
    "post_mlp_norm": Role("post_feedforward_layernorm", "post_ffw_norm"),
    "gate": Role("mlp.gate_proj", "ffn_gate"),
    "up": Role("mlp.up_proj", "ffn_up"),
    "gate_up": Role("mlp.gate_up_proj", "ffn_up"),          # fused, rows [gate; up] (Phi-3)
    "down": Role("mlp.down_proj", "ffn_down"),
    # mixture of experts: the router, and each expert e's gated MLP (GGUF: all experts in one tensor)
    "router": Role("mlp.gate", "ffn_gate_inp"),
    "expert_gate": Role("mlp.experts.{e}.gate_proj", "ffn_gate_exps"),
    "expert_up": Role("mlp.experts.{e}.up_proj", "ffn_up_exps"),
    "expert_down": Role("mlp.experts.{e}.down_proj", "ffn_down_exps"),
}
EXPERT_ROLES = ("expert_gate", "expert_up", "expert_down")
