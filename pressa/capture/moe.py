"""A mixture-of-experts MLP (Mixtral, Qwen3-MoE) as one ONNX Runtime operator.

The router's logits go in; the operator takes their softmax, the top k experts and (normalize_routing_
weights) renormalizes their weights, runs each token through its experts and sums. Experts are gated
SiLU MLPs: ONNX Runtime's CPU kernels take them as SwiGLU with gate and up rows interleaved
(swiglu_fusion=1), weights [experts, out, in]. Float builds use MoE; int4/int8 builds QMoE, whose
symmetric weights (codes offset by 2^(bits-1), like MatMulNBits') are per row, or, at 4 bits, per block
when the block divides both inner sizes (ONNX Runtime 1.32's 8-bit block-wise CPU path does not
reproduce its dequantized weights, so 8-bit experts stay per row).
"""

from __future__ import annotations

import numpy as np

from pressa.capture.onnx_writer import MS, GraphWriter
from pressa.errors import UnsupportedArchitecture
from pressa.quant.rtn import quantize_rtn


def _packed(w: np.ndarray, bits: int, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One expert's [N, K] weight as QMoE codes (packed low bits first) and scales ([N] or [N, K/block])."""
    n, k = w.shape
    qw = quantize_rtn(w, bits, block or k, symmetric=True)
    codes = qw.q.reshape(n, -1)[:, :k]
    per = 8 // bits
    packed = np.zeros((n, k // per), np.uint8)
    for j in range(per):
        packed |= (codes[:, j::per] << (bits * j)).astype(np.uint8)
    return packed, (qw.scales if block else qw.scales[:, 0])


def _topk_mass(g: GraphWriter, router: str, k: int, lab: str) -> str:
    """Each token's summed softmax probability of its top k experts ([tokens, 1]). ONNX Runtime 1.32's CPU
    QMoE renormalizes the top-k weights even with normalize_routing_weights=0; multiplying its output by
    this mass gives the unnormalized mix (Qwen3-MoE with norm_topk_prob false)."""
    probs = g.op("Softmax", [router], f"{lab}/router_Softmax", axis=-1)
    top = g.node("TopK", [probs, g.const(f"{lab}/k", [k])], f"{lab}/router_TopK", 2, axis=-1)[0]
    return g.op("ReduceSum", [top, g.const(f"{lab}/axes", [-1])], f"{lab}/router_mass", keepdims=1)


def moe_mlp(b, g: GraphWriter, h: str, i: int) -> str:
    """Layer i's MoE block on hidden states h ([batch, seq, hidden]); `b` is the DecoderBuilder."""
    cfg, p, lab = b.cfg, f"model.layers.{i}.mlp.", f"/model/layers.{i}/moe"
    if cfg.hidden_act not in ("silu", "swish"):
        raise UnsupportedArchitecture(f"experts with activation {cfg.hidden_act!r} are not supported yet (SiLU only)")
    flat = g.op("Reshape", [h, g.const(f"{lab}/flat", [-1, cfg.hidden_size])], f"{lab}/Reshape")
    router = b.linear(g, flat, p + "gate", b.read(p + "gate.weight"), None, f"{i}.router", None)
    experts = range(cfg.num_experts)
    fc1 = [np.stack([b.read(f"{p}experts.{e}.gate_proj.weight"), b.read(f"{p}experts.{e}.up_proj.weight")],
                    axis=1).reshape(2 * cfg.expert_intermediate, cfg.hidden_size) for e in experts]
    fc2 = [b.read(f"{p}experts.{e}.down_proj.weight") for e in experts]
    attrs = dict(k=cfg.experts_per_token, activation_type="swiglu", swiglu_fusion=1,
                 normalize_routing_weights=int(cfg.normalize_topk))
    bits = b.bits_for(f"{i}.gate_up")
    if bits is None:
        y = g.op("MoE", [flat, router, b.fw(g, f"{p}experts.fc1", np.stack(fc1)), "",
                         b.fw(g, f"{p}experts.fc2", np.stack(fc2))], f"{lab}/MoE", domain=MS, **attrs)
    else:
        block = b.o.block_size           # 8-bit block-wise QMoE disagrees with its own dequantized weights (1.32)
        block = block if bits == 4 and cfg.hidden_size % block == 0 and cfg.expert_intermediate % block == 0 else None
        ins = [flat, router]
        for name, ws in (("fc1", fc1), ("fc2", fc2)):
            parts = [_packed(w, bits, block) for w in ws]
            ins += [g.weight(f"{p}experts.{name}.qweight", np.stack([q for q, _ in parts])),
                    b.fw(g, f"{p}experts.{name}.scales", np.stack([s for _, s in parts])), ""]
        y = g.op("QMoE", ins[:-1], f"{lab}/QMoE", domain=MS, expert_weight_bits=bits,
                 **({"block_size": block} if block else {}), **{**attrs, "normalize_routing_weights": 1})
        if not cfg.normalize_topk:
            y = g.op("Mul", [y, _topk_mass(g, router, cfg.experts_per_token, lab)], f"{lab}/unnormalize")
    return g.op("Reshape", [y, g.op("Shape", [h], f"{lab}/Shape")], f"{lab}/Reshape_back")
