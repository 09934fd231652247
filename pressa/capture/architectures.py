"""Supported decoder architectures, one table row each: how a model differs from plain Llama.

Adding an architecture is adding a row (and, at most, one small emitter for a new feature). Tensor
names: the roles of capture/roles.py, spelled per source there; a row spells only what its family's
Hugging Face checkpoints name otherwise (hf_names) and llama.cpp's converter quirks (gguf_*).
"""

from __future__ import annotations

from dataclasses import dataclass

from pressa.capture.roles import EXPERT_ROLES, ROLES
from pressa.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Arch:
    model_type: str
    genai_type: str                      # onnxruntime-genai's "type" field ("decoder": its generic one)
    norm_offset: float = 0.0             # Gemma stores RMSNorm gamma as (w - 1)
    embed_scale: bool = False            # Gemma multiplies embeddings by sqrt(hidden)
    qk_norm: bool = False                # per-head RMSNorm on q and k before rotary (Qwen3, Gemma3)
    qk_norm_whole: bool = False          # ... over the whole q and k projections instead (OLMo 2)
    pre_norm: bool = True                # False: norms only after attention and MLP (OLMo 2)
    qkv_bias: bool = False               # bias on q/k/v projections regardless of config (Qwen2)
    fused_qkv: str | None = None         # one tensor for q,k,v (Phi3: qkv_proj)
    fused_gate_up: str | None = None     # one tensor for gate,up (Phi3: gate_up_proj)
    mlp_norm: str = "post_attention_layernorm"      # the norms around attention and MLP, by pressa's names
    post_attn_norm: str | None = None                # (roles mlp_norm, post_attn_norm, post_mlp_norm)
    post_mlp_norm: str | None = None
    default_act: str = "silu"
    act_aliases: tuple[tuple[str, str], ...] = ()   # config spellings that mean another activation
    tie_default: bool = False            # tied embeddings when the config does not say
    # which layers use the sliding window when the config has one and no layer_types: "all";
    # "even" (Gemma 2); "pattern" (Gemma 3: all but every sliding_window_pattern-th); "opt-in" (Qwen:
    # only with use_sliding_window)
    sliding: str = "all"
    gguf_arch: str | None = None         # llama.cpp's general.architecture (None: the model_type)
    gguf_permuted_qk: bool = False       # llama.cpp permutes q/k rows for interleaved rotary (Llama)
    gguf_keys: tuple[tuple[str, str], ...] = ()     # (GGUF metadata key after "{arch}.", config key) of the row
    gguf_defaults: tuple[tuple[str, float | bool], ...] = ()   # config llama.cpp assumes, not in the file
    norm: str = "rms"                    # "rms" (RMSNorm) | "layer" (LayerNorm)
    norm_bias: bool = True               # a LayerNorm's bias (Cohere's has none)
    rotary_interleaved: bool = False     # rotary on interleaved pairs rather than halves (Cohere)
    positions: str = "rotary"            # "rotary" | "learned" (absolute position embeddings)
    gated_mlp: bool = True               # act(gate) * up; False: act(up)
    rope_layers: bool = False            # some layers skip rotary (SmolLM3's no_rope_layers)
    parallel: str = ""                   # attention and MLP on the same input: "shared norm" (Phi), "two norms"
    interleaved_qkv: bool = False        # fused qkv laid out per head as [q, k, v] (GPT-NeoX)
    refused: tuple[str, ...] = ()        # config switches of the family that are not built: refused when on
    moe: bool = False                    # mixture-of-experts MLPs (router + experts; ONNX Runtime's MoE/QMoE)
    moe_normalize: bool = True           # renormalize the top-k routing weights when the config does not say
    mlp_ratio: int = 0                   # intermediate size = ratio x hidden when the config has none
    config_aliases: tuple[tuple[str, str], ...] = ()   # (pressa's key, the family's config key)
    # roles the family's checkpoints spell otherwise: (role, the family's name, per layer with {i}), each
    # read with .weight and .bias under each of weight_prefixes; `transposed` names (Conv1D) hold [in, out]
    hf_names: tuple[tuple[str, str], ...] = ()
    weight_prefixes: tuple[str, ...] = ("",)
    transposed: tuple[str, ...] = ()

    def layer_sliding(self, cfg: dict, n: int) -> list[bool]:
        """Which of the n layers attend through the sliding window."""
        types = cfg.get("layer_types")
        if types:
            return [t == "sliding_attention" for t in types]
        if not cfg.get("sliding_window") or (self.sliding == "opt-in" and not cfg.get("use_sliding_window")):
            return [False] * n
        if self.sliding == "even":
            return [i % 2 == 0 for i in range(n)]
        if self.sliding == "pattern":
            pattern = int(cfg.get("sliding_window_pattern", 6))
            return [(i + 1) % pattern != 0 for i in range(n)]
        return [True] * n

    def role_names(self) -> dict[str, str]:
        """The roles this row's models have -> pressa's name (per layer with {i})."""
        names = {r: role.full() for r, role in ROLES.items()}
        drop = {"q", "k", "v"} if self.fused_qkv else {"qkv"}
        drop |= {"gate", "up"} if self.fused_gate_up else {"gate_up"}
        drop |= set() if self.gated_mlp else {"gate"}
        drop |= set() if self.positions == "learned" else {"positions"}
        drop |= set() if self.qk_norm else {"q_norm", "k_norm"}
        drop |= set() if self.moe else {"router", *EXPERT_ROLES}
        for role, name in (("mlp_norm", self.mlp_norm), ("post_attn_norm", self.post_attn_norm),
                           ("post_mlp_norm", self.post_mlp_norm)):
            if name:
                names[role] = f"model.layers.{{i}}.{name}"
            else:
                drop.add(role)
        return {r: n for r, n in names.items() if r not in drop}

    def gguf_names(self, layers: int) -> dict[str, str]:
        """llama.cpp's tensor names (without .weight/.bias) -> pressa's."""
        out = {}
        for role, ours in self.role_names().items():
            theirs = ROLES[role].gguf
            for i in range(layers) if ROLES[role].layer else [None]:
                out[theirs if i is None else f"blk.{i}.{theirs}"] = ours.format(i=i, e="{e}")
        return out

    def linear_parts(self, i: int) -> dict[str, list[str]]:
        """Layer i's four linears (pressa.quant.plan.LINEARS) -> the tensors, in pressa's names without
        .weight/.bias, stacked along the output axis to make each. Read by the builder and by the
        mixed-precision sensitivity."""
        n = {r: name.format(i=i, e="{e}") for r, name in self.role_names().items()}
        qkv = [n["qkv"]] if "qkv" in n else [n["q"], n["k"], n["v"]]
        up = [n["gate_up"]] if "gate_up" in n else [n[r] for r in ("gate", "up") if r in n]
        return {"qkv": qkv, "o": [n["o"]], "gate_up": up, "down": [n["down"]]}

    @property
    def calibrated(self) -> bool:
        """Whether AWQ, GPTQ and mixed precision are built for the row (they fold scales into the norm
        before the attention and the one before a gated MLP)."""
        return self.gated_mlp and self.pre_norm and not self.parallel and not self.moe

    def layer_rotary(self, cfg: dict, n: int) -> list[bool]:
        """Which layers apply rotary embeddings: all of a rotary row, except those SmolLM3's
        no_rope_layers marks 0 (every no_rope_layer_interval-th when the list is absent)."""
        if self.positions != "rotary":
            return [False] * n
        if self.rope_layers:
            flags = cfg.get("no_rope_layers")
            if not flags:
                every = int(cfg.get("no_rope_layer_interval") or 4)
                flags = [int((i + 1) % every != 0) for i in range(n)]
            return [bool(f) for f in flags[:n]]
        return [True] * n

    def activation(self, act: str) -> str:
        return dict(self.act_aliases).get(act, act)

    def config_view(self, cfg: dict) -> dict:
        """The config with the family's own keys also under pressa's names (a one-line error for a switch
        of the family that is not built)."""
        on = [k for k in self.refused if cfg.get(k)]
        if on:
            raise UnsupportedArchitecture(f"{self.model_type} with {on[0]} is not supported yet")
        return {**cfg, **{k: cfg[v] for k, v in self.config_aliases if cfg.get(v) is not None}}

    def checkpoint_names(self, reader, layers: int, experts: int = 0) -> dict[str, str]:
        """pressa's weight names -> their names in `reader` (the family's checkpoint)."""
        if not self.hf_names:
            return {n: n for n in reader.names}
        spelled, names = dict(self.hf_names), {}
        for role, ours in self.role_names().items():
            for i in range(layers) if ROLES[role].layer else [0]:
                for e in range(experts) if ROLES[role].per_expert else [0]:
                    for suffix in (".weight", ".bias"):
                        found = reader.first(p + spelled.get(role, ours).format(i=i, e=e) + suffix
                                             for p in self.weight_prefixes)
                        if found:
                            names[ours.format(i=i, e=e) + suffix] = found
        return names

    def canonical(self, reader, layers: int, heads: int = 1, experts: int = 0):
        """The weights (a WeightReader) under the names and layout the builder reads (Llama's, [out, in])."""
        from pressa.sources.base import WeightReader

        if not self.hf_names:
            return reader
        names = self.checkpoint_names(reader, layers, experts)
        flip = {n for n, src in names.items() if n.endswith(".weight") and any(t in src for t in self.transposed)}

        def read(name: str):
            w = reader(names[name])
            w = w.T if name in flip else w
            if self.interleaved_qkv and ".qkv_proj." in name:      # [heads, 3, d, ...] -> [3, heads, d, ...]
                w = w.reshape(heads, 3, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)
            return w

        def shape(name: str) -> tuple:
            s = reader.shape(names[name])
            return tuple(reversed(s)) if name in flip else s

        def rows(name: str, start: int, stop: int):
            if name in flip or (self.interleaved_qkv and ".qkv_proj." in name):
                return read(name)[start:stop]
            return reader.rows(names[name], start, stop)
        return WeightReader(set(names), read, shape, rows if reader.reads_rows else None)

    def features(self) -> str:
        """What sets the row apart from plain Llama, in words (pressa info)."""
        said = [("LayerNorm" + ("" if self.norm_bias else " without bias"), self.norm == "layer"),
                ("interleaved rotary", self.rotary_interleaved), ("learned positions", self.positions == "learned"),
                ("some layers without rotary", self.rope_layers),
                ("plain MLP", not self.gated_mlp), ("mixture of experts", self.moe),
                (f"parallel attention and MLP ({self.parallel})", self.parallel),
                ("qkv bias", self.qkv_bias), ("q/k norm", self.qk_norm), ("post-norms only", not self.pre_norm),
                ("fused qkv", self.fused_qkv),
                ("fused gate/up", self.fused_gate_up), ("sandwich norms", self.pre_norm and self.post_mlp_norm),
                ("norm weight +1", self.norm_offset), ("scaled embeddings", self.embed_scale),
                ("tied embeddings by default", self.tie_default),
                (f"sliding window: {self.sliding}", self.sliding != "all"),
                (f"activation {self.default_act}", self.default_act != "silu")]
        return ", ".join(w for w, on in said if on)


_SANDWICH = dict(
    mlp_norm="pre_feedforward_layernorm",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
)

_GEMMA = dict(norm_offset=1.0, embed_scale=True, default_act="gelu_pytorch_tanh", tie_default=True)

ARCHITECTURES: dict[str, Arch] = {a.model_type: a for a in [
    Arch("llama", "llama", gguf_permuted_qk=True),
    Arch("mistral", "mistral"),
    Arch("qwen2", "qwen2", qkv_bias=True, sliding="opt-in"),
    Arch("qwen3", "qwen3", qk_norm=True, sliding="opt-in"),
    Arch("phi3", "phi3", fused_qkv="qkv_proj", fused_gate_up="gate_up_proj"),
    # Gemma's config says gelu but means the tanh form
    Arch("gemma", "gemma", act_aliases=(("gelu", "gelu_pytorch_tanh"),), **_GEMMA),
    Arch("gemma2", "gemma2", sliding="even", **_GEMMA, **_SANDWICH),
    Arch("gemma3_text", "gemma3_text", qk_norm=True, sliding="pattern", gguf_arch="gemma3",
         gguf_defaults=(("rope_local_base_freq", 10000.0),), **_GEMMA, **_SANDWICH),
    Arch("smollm3", "llama", rope_layers=True, sliding="opt-in", gguf_permuted_qk=True),
    Arch("stablelm", "decoder", norm="layer", config_aliases=(("rms_norm_eps", "layer_norm_eps"),
                                                               ("attention_bias", "use_qkv_bias")),
         refused=("use_parallel_residual", "qk_layernorm"), gguf_keys=(("use_parallel_residual",) * 2,)),
    # its multipliers are config keys (capture/config.py); GGUF calls them scales
    Arch("granite", "granite", gguf_permuted_qk=True,
         gguf_keys=(("attention.scale", "attention_multiplier"), ("embedding_scale", "embedding_multiplier"),
                    ("residual_scale", "residual_multiplier"), ("logit_scale", "logits_scaling"))),
    Arch("cohere", "decoder", norm="layer", norm_bias=False, parallel="shared norm", rotary_interleaved=True,
         tie_default=True, config_aliases=(("rms_norm_eps", "layer_norm_eps"),), refused=("use_qk_norm",),
         gguf_arch="command-r", gguf_keys=(("logit_scale",) * 2,)),
    Arch("olmo2", "decoder", qk_norm=True, qk_norm_whole=True, pre_norm=False, mlp_norm="",
         post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm"),
    Arch("phi", "phi", norm="layer", gated_mlp=False, parallel="shared norm", default_act="gelu_new",
         config_aliases=(("rms_norm_eps", "layer_norm_eps"),), refused=("qk_layernorm",), gguf_arch="phi2",
         hf_names=(("final_norm", "model.final_layernorm"), ("o", "model.layers.{i}.self_attn.dense"),
                   ("up", "model.layers.{i}.mlp.fc1"), ("down", "model.layers.{i}.mlp.fc2"))),
    # Pythia: parallel attention and MLP with a norm each (unless use_parallel_residual is off)
    Arch("gpt_neox", "decoder", norm="layer", gated_mlp=False, parallel="two norms", fused_qkv="qkv_proj",
         interleaved_qkv=True, default_act="gelu", gguf_arch="gptneox", gguf_keys=(("use_parallel_residual",) * 2,),
         config_aliases=(("rms_norm_eps", "layer_norm_eps"), ("partial_rotary_factor", "rotary_pct"),
                         ("rope_theta", "rotary_emb_base")),
         hf_names=(("embed", "gpt_neox.embed_in"), ("final_norm", "gpt_neox.final_layer_norm"), ("head", "embed_out"),
                   ("attn_norm", "gpt_neox.layers.{i}.input_layernorm"),
                   ("mlp_norm", "gpt_neox.layers.{i}.post_attention_layernorm"),
                   ("qkv", "gpt_neox.layers.{i}.attention.query_key_value"),
                   ("o", "gpt_neox.layers.{i}.attention.dense"),
                   ("up", "gpt_neox.layers.{i}.mlp.dense_h_to_4h"), ("down", "gpt_neox.layers.{i}.mlp.dense_4h_to_h"))),
    # transformers 5 writes num_local_experts where 4 wrote num_experts
    # (llama.cpp's qwen3moe always renormalizes the top-k weights)
    Arch("qwen3_moe", "decoder", qk_norm=True, moe=True, moe_normalize=False, sliding="opt-in", gguf_arch="qwen3moe",
         config_aliases=(("num_experts", "num_local_experts"),), gguf_defaults=(("norm_topk_prob", True),),
         gguf_keys=(("expert_weights_norm", "norm_topk_prob"),)),
    # llama.cpp writes Mixtral as llama with expert tensors (GGUF_EXPERTS)
    Arch("mixtral", "decoder", moe=True, config_aliases=(("num_experts", "num_local_experts"),), gguf_arch="llama",
         gguf_permuted_qk=True,
         hf_names=(("router", "model.layers.{i}.block_sparse_moe.gate"),
                   ("expert_gate", "model.layers.{i}.block_sparse_moe.experts.{e}.w1"),
                   ("expert_up", "model.layers.{i}.block_sparse_moe.experts.{e}.w3"),
                   ("expert_down", "model.layers.{i}.block_sparse_moe.experts.{e}.w2"))),
    # GPT-2 (DialoGPT, distilgpt2): learned positions, LayerNorm with bias, Conv1D weights, fused qkv
    Arch("gpt2", "decoder", norm="layer", positions="learned", gated_mlp=False, mlp_ratio=4, fused_qkv="qkv_proj",
         default_act="gelu_new", tie_default=True,
         config_aliases=(("hidden_size", "n_embd"), ("num_attention_heads", "n_head"),
                         ("num_hidden_layers", "n_layer"), ("max_position_embeddings", "n_positions"),
                         ("intermediate_size", "n_inner"), ("rms_norm_eps", "layer_norm_epsilon"),
                         ("hidden_act", "activation_function")),
         hf_names=(("embed", "wte"), ("positions", "wpe"), ("final_norm", "ln_f"), ("attn_norm", "h.{i}.ln_1"),
                   ("qkv", "h.{i}.attn.c_attn"), ("o", "h.{i}.attn.c_proj"), ("mlp_norm", "h.{i}.ln_2"),
                   ("up", "h.{i}.mlp.c_fc"), ("down", "h.{i}.mlp.c_proj")),
         weight_prefixes=("transformer.", ""), transposed=("c_attn", "c_proj", "c_fc"),
         refused=("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")),
]}

# llama.cpp's architecture names -> rows; those of files with expert tensors (Mixtral is llama.cpp's llama)
GGUF_ARCHITECTURES: dict[str, Arch] = {}
for _row in ARCHITECTURES.values():
    GGUF_ARCHITECTURES.setdefault(_row.gguf_arch or _row.model_type, _row)
GGUF_EXPERTS: dict[str, Arch] = {a.gguf_arch or a.model_type: a for a in ARCHITECTURES.values() if a.moe}

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
