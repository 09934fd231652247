"""Builds a decoder LLM's ONNX graph directly from its weights, with ONNX Runtime's fused operators.

Weights stream from the source one layer at a time: read, (quantize,) write, forget.
Inputs/outputs follow onnxruntime-genai: input_ids, attention_mask, past_key_values.N.key/value
-> logits, present.N.key/value (KV in BNSH).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS, LOGITS, past, present
from pressa.capture.build_options import BuildOptions
from pressa.capture.config import DecoderConfig
from pressa.capture.embeddings import HIDDEN, EmbeddingEmitters
from pressa.capture.moe import moe_mlp
from pressa.capture.onnx_writer import MS, GraphWriter
from pressa.capture.positions import PositionEmitters
from pressa.errors import BadArgument, CorruptModel, UnsupportedArchitecture
from pressa.quant.packing import matmulnbits_tensors
from pressa.quant.plan import LINEARS, LayerPlan, QuantSettings, plan_layer
from pressa.quant.rtn import fp16_exact, quantize_rtn, zero_points
from pressa.sources.base import WeightReader

MAX_CONTEXT = 32768
HIDDEN_OUT = "hidden_out"                     # a one-layer graph's output (build_layer)


class DecoderBuilder(PositionEmitters, EmbeddingEmitters):
    def __init__(self, cfg: DecoderConfig, weights: WeightReader, opts: BuildOptions, calib: dict | None = None):
        opts.validate()
        if (opts.algorithm != "rtn" or opts.scale_estimation) and not calib:
            raise BadArgument(f"--algorithm {opts.algorithm}{' --scale-estimation' * opts.scale_estimation} needs "
                              "calibration data (--calibration-data FILE)")
        if opts.precision in ("int4", "int8") and opts.block_size > cfg.hidden_size:
            raise BadArgument(f"group size {opts.block_size} is larger than the model's hidden size "
                              f"{cfg.hidden_size}; use {cfg.hidden_size} or less")
        if any(cfg.layer_rotary) and cfg.rotary_dim % 16:
            raise UnsupportedArchitecture(f"rotary embedding over {cfg.rotary_dim} dims: ONNX Runtime's "
                                          "GroupQueryAttention needs a multiple of 16")
        self.cfg, self.w, self.o = cfg, weights, opts
        self.calib = calib or {}
        self.lora = None                     # RuntimeAdapters (capture/lora.py) for auto-opt --adapters
        self.record: dict | None = None      # key -> {"quantized", "awq_scale"}: what a layer build decided
        self.awq_scales: dict[str, np.ndarray] = {}     # key -> AWQ's s (its weight arrives multiplied by s)
        self._captured: set[str] = set()
        self.fp16 = opts.precision == "fp16"
        self.np_dtype = np.float16 if self.fp16 else np.float32
        self.onnx_dtype = TensorProto.FLOAT16 if self.fp16 else TensorProto.FLOAT
        self.context = min(opts.context_length or cfg.max_position, cfg.max_position, MAX_CONTEXT)

    # -- weights ----------------------------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        if name not in self.w:
            raise CorruptModel(f"weight {name!r} is missing from the model; the checkpoint is incomplete "
                               "or not a supported architecture")
        return self.w(name)

    def opt(self, name: str) -> np.ndarray | None:
        return self.w(name) if name in self.w else None

    def fw(self, g: GraphWriter, name: str, a: np.ndarray) -> str:
        return g.weight(name, np.asarray(a, dtype=self.np_dtype))

    def bits_for(self, key: str) -> int | None:
        if self.o.precision in ("fp32", "fp16"):
            return None
        return self.o.layer_bits.get(key, 4 if self.o.precision == "int4" else 8)

    def group_for(self, key: str) -> int:
        return self.o.layer_groups.get(key, self.o.block_size)

    def linear(self, g: GraphWriter, x: str, name: str, w: np.ndarray, bias: np.ndarray | None,
               key: str, bits: int | None, input_scale: np.ndarray | None = None) -> str:
        """y = (x / input_scale) @ w.T (+ bias); w is [N, K]. Quantized precisions use MatMulNBits."""
        if self.o.capture_inputs and key not in self._captured:
            self._captured.add(key)
            g.node("Identity", [x], f"/calib/{key}", outputs=[f"calib.{key}"])
            g.add_output(f"calib.{key}", self.onnx_dtype, None)
        if input_scale is not None:
            inv = self.fw(g, f"{name}.input_scale", 1.0 / input_scale)
            x = g.op("Mul", [x, inv], f"{name}/awq_Mul")
        y = None
        if self.lora is not None and key.split(".")[-1] in LINEARS:
            y = self.lora.linear(self, g, x, name, w, key, bits)
        if y is None and bits is None:
            y = g.op("MatMul", [x, self.fw(g, f"{name}.weight", w.T)], f"{name}/MatMul")
        elif y is None:
            y = self.matmul_nbits(g, x, name, w, bits, key=key)
        if bias is not None:
            y = g.op("Add", [y, self.fw(g, f"{name}.bias", bias)], f"{name}/Add")
        return y

    def matmul_nbits(self, g: GraphWriter, x: str, name: str, w: np.ndarray, bits: int,
                     share_key: int | None = None, packed: dict | None = None, key: str = "",
                     block_size: int | None = None, shape: tuple[int, int] | None = None,
                     half_scales: bool | None = None) -> str:
        """MatMulNBits of x and w [N, K] (or the `packed` tensors of a weight of `shape`); `half_scales`
        as `scales` takes it."""
        n, k = shape or w.shape
        t = packed or matmulnbits_tensors(self.quantize(w, bits, key))
        ins = [x, g.weight(f"{name}.qweight", t["B"], share_key=share_key),
               self.scales(g, f"{name}.scales", t["scales"], None if share_key is None else share_key + 1,
                           half=half_scales)]                        # the tied embedding's, shared
        if "zero_points" in t:
            ins.append(g.weight(f"{name}.zero_points", t["zero_points"],
                                share_key=None if share_key is None else share_key + 2))
        return g.op("MatMulNBits", ins, f"{name}/MatMulNBits", domain=MS, K=k, N=n, bits=bits,
                    block_size=block_size or self.group_for(key), accuracy_level=self.o.accuracy_level)

    def scales(self, g: GraphWriter, name: str, scales: np.ndarray, share_key: int | None = None,
               dims: tuple[int, ...] | None = None, half: bool | None = None) -> str:
        """Quantization scales as the graph's float type. An fp32 graph stores them as float16 on
        disk when that is lossless (the quantizers round scales to float16 first) and casts them
        back; ONNX Runtime folds the Cast before MatMulNBits prepacks, so only the file shrinks.
        `half`: whether they are stored as float16, where the caller decided it (bytes shared with
        the tied embedding, whose arrays are no longer held)."""
        if half is None:
            half = fp16_exact(scales)
        if self.fp16 or not half:
            return g.weight(name, scales.astype(self.np_dtype), share_key=share_key, dims=dims)
        half = g.weight(name + "_fp16", scales.astype(np.float16), share_key=share_key, dims=dims)
        return g.op("Cast", [half], name + "/Cast", to=TensorProto.FLOAT)

    def quantize(self, w: np.ndarray, bits: int, key: str, grid: tuple[int, bool, bool] | None = None):
        """RTN, or GPTQ with this weight's calibration Hessian; a layer-by-layer calibration's result when
        it has one for `key` (and records what it quantizes when `self.record` is a dict). `grid`: (group,
        symmetric, search) where the weight's own rules differ from the linears' (the tied embedding)."""
        stats = self.calib.get(key)
        if getattr(stats, "quantized", None) is not None:
            return stats.quantized
        group, sym, search = grid or (self.group_for(key), self.o.symmetric, self.searching(bits))
        h = self.hessian(key, stats)
        if self.o.algorithm.endswith("gptq") and h is not None:
            from pressa.quant.gptq import quantize_gptq

            static = None
            if self.o.scale_estimation and self.o.act_order:     # GPTQ around scale-estimated groups
                from pressa.quant.scale_estimation import estimate_scales

                est = estimate_scales(w, h, quantize_rtn(w, bits, group, sym, search))
                static = (est.scales, zero_points(est))
            out = quantize_gptq(w, h, bits, group, sym, search=search, act_order=self.o.act_order, static=static)
        else:
            out = quantize_rtn(w, bits, group, sym, search)
            if self.o.scale_estimation and h is not None:
                from pressa.quant.scale_estimation import estimate_scales

                out = estimate_scales(w, h, out)
        if self.record is not None and key:
            self.record.setdefault(key, {})["quantized"] = out
        return out

    def hessian(self, key: str, stats) -> np.ndarray | None:
        """H = X^T X of `key`'s inputs where quantizing uses it; for an AWQ-scaled weight (W s, x / s) the
        Hessian of the scaled inputs, H / (s s^T)."""
        if not self.o.uses_hessian or getattr(stats, "h", None) is None:
            return None
        s = self.awq_scales.get(key)
        return stats.hessian() if s is None else stats.hessian() / np.outer(s, s).astype(np.float32)

    def searching(self, bits: int) -> bool:
        """The MSE search pays at 4 bits and below; at 8 bits only the symmetric Q8_0-grid candidate
        does. Plain AWQ keeps plain min/max: its scales were chosen for that grid (with the search on
        top, SmolLM2's PPL went 21.10 -> 21.36)."""
        return self.o.scale_search and (bits <= 4 or self.o.symmetric) and self.o.algorithm != "awq"

    def norm_weight(self, name: str, divisor: np.ndarray | None = None) -> np.ndarray:
        w = self.read(name) + self.cfg.arch.norm_offset
        return w if divisor is None else w / divisor

    def norm_params(self, g: GraphWriter, wname: str, divisor: np.ndarray | None) -> list[str]:
        """[gamma] for RMSNorm, [gamma, beta] for LayerNorm (the row's norm kind)."""
        params = [self.fw(g, wname, self.norm_weight(wname, divisor))]
        if self.cfg.arch.norm == "layer" and self.cfg.arch.norm_bias:
            bname = wname.removesuffix(".weight") + ".bias"
            b = self.read(bname)
            params.append(self.fw(g, bname, b if divisor is None else b / divisor))
        return params

    def rms(self, g: GraphWriter, x: str, wname: str, label: str, divisor: np.ndarray | None = None) -> str:
        """The row's norm (RMSNorm, or LayerNorm with bias) of x."""
        op = "LayerNormalization" if self.cfg.arch.norm == "layer" else "SimplifiedLayerNormalization"
        return g.node(op, [x, *self.norm_params(g, wname, divisor)], label, axis=-1, epsilon=self.cfg.rms_eps,
                      stash_type=1)[0]

    def skip_rms(self, g: GraphWriter, x: str, skip: str, wname: str, label: str,
                 divisor: np.ndarray | None = None) -> tuple[str, str]:
        """(normed, x + skip) in one fused op."""
        op = "SkipLayerNormalization" if self.cfg.arch.norm == "layer" else "SkipSimplifiedLayerNormalization"
        out = g.node(op, [x, skip, *self.norm_params(g, wname, divisor)], label, 4, MS, epsilon=self.cfg.rms_eps)
        return out[0], out[3]

    # -- graph ------------------------------------------------------------------------------
    def build(self, out_dir: Path, progress: Callable[[int, int, str], None] | None = None) -> dict:
        cfg = self.cfg
        g = GraphWriter(out_dir / "model.onnx")
        try:
            info = self._emit(g, progress)
            info["data_bytes"] = g.save()
        finally:
            g.abort()
        info["op_counts"] = dict(sorted(g.op_counts.items()))
        info["context_length"] = self.context
        info["num_layers"] = cfg.num_layers
        return info

    def _emit(self, g: GraphWriter, progress) -> dict:
        cfg, dt = self.cfg, self.onnx_dtype
        kv_shape = ["batch_size", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim]
        ids = g.add_input(INPUT_IDS, TensorProto.INT64, ["batch_size", "sequence_length"])
        mask = g.add_input(ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])
        for i in range(cfg.num_layers):
            for kv in ("key", "value"):
                g.add_input(past(i, kv), dt, kv_shape)
        if self.lora is not None:
            self.lora.declare(g)
        g.add_output(LOGITS, TensorProto.FLOAT,
                     ["batch_size", 1 if self.o.last_token_logits else "sequence_length", cfg.vocab_size])

        total = cfg.num_layers + 2
        step = (lambda i, d: progress(i, total, d)) if progress else (lambda i, d: None)
        step(0, "embeddings")
        ctx = self._attention_context(g, mask)
        x, tied = self._embed(g, ids)
        if cfg.arch.positions == "learned":
            x = self._positions(g, x, ids, ctx)
        pending, resid = x, None
        for i in range(cfg.num_layers):
            step(i + 1, f"layer {i + 1}/{cfg.num_layers}")
            pending, resid = self._layer(g, i, pending, resid, ctx)
        step(cfg.num_layers + 1, "lm_head")
        h, _ = self.skip_rms(g, pending, resid, "model.norm.weight", "/model/norm")
        if self.o.last_token_logits:
            h = self._last_token(g, h, ids, ctx)
        self._lm_head(g, h, ids, tied)
        step(total, "done")
        return {}

    def _attention_context(self, g: GraphWriter, mask: str) -> dict:
        """GroupQueryAttention's sequence lengths (sum(mask) - 1 per row), the mask's width, the rope caches."""
        one = g.const("/model/const/one", [1])
        rsum = g.op("ReduceSum", [mask, one], "/model/attn_mask/ReduceSum", keepdims=0)
        seqlens = g.op("Cast", [g.op("Sub", [rsum, one], "/model/attn_mask/Sub")], "/model/attn_mask/Cast",
                       to=TensorProto.INT32)
        width = g.op("Gather", [g.op("Shape", [mask], "/model/attn_mask/Shape"),
                                g.const("/model/const/idx1", 1)], "/model/attn_mask/Gather", axis=0)
        total_len = g.op("Cast", [width], "/model/attn_mask/Cast_total", to=TensorProto.INT32)
        return dict(seqlens=seqlens, total=total_len, rope=self._rope(g))

    def build_layer(self, i: int, path: Path) -> None:
        """Layer i alone as a graph (layer-by-layer calibration, capture/layerwise.py): the hidden state
        before it ([batch, seq, hidden] float32), attention_mask and its empty past in; the hidden state
        after it out as `hidden_out` (and each linear's input as calib.<key> when capturing)."""
        cfg = self.cfg
        g = GraphWriter(path)
        try:
            x = g.add_input(HIDDEN, TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.hidden_size])
            mask = g.add_input(ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])
            for kv in ("key", "value"):
                g.add_input(past(i, kv), TensorProto.FLOAT, ["batch_size", cfg.num_kv_heads, 0, cfg.head_dim])
            pending, resid = self._layer(g, i, x, None, self._attention_context(g, mask))
            g.node("Add", [pending, resid], "/layer/residual_Add", outputs=[HIDDEN_OUT])
            g.add_output(HIDDEN_OUT, TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.hidden_size])
            g.save()
        finally:
            g.abort()

    def _layer(self, g: GraphWriter, i: int, pending: str, resid: str | None, ctx: dict) -> tuple[str, str]:
        """Layer i over (the previous layer's output still to add, the residual stream; None before the
        first layer): returns the same pair after it. Sequential (norm, attention, norm, MLP) or parallel
        (attention and MLP on the same input: one shared norm, or one norm each)."""
        cfg, plan = self.cfg, self.plan(i)
        p, lab, div = f"model.layers.{i}.", f"/model/layers.{i}", plan.norm_divisors.get
        if not cfg.arch.pre_norm:
            return self._post_norm_layer(g, i, pending, resid, ctx, plan)
        if resid is None:
            h, resid = self.rms(g, pending, p + "input_layernorm.weight", f"{lab}/input_layernorm",
                                div("input")), pending
        else:
            h, resid = self.skip_rms(g, pending, resid, p + "input_layernorm.weight", f"{lab}/input_layernorm",
                                     div("input"))
        a = self._scaled(g, self._attention(g, h, i, ctx, plan), cfg.residual_multiplier, f"{i}/attn")
        if cfg.parallel:
            if cfg.parallel == "two norms":
                h = self.rms(g, resid, p + cfg.arch.mlp_norm + ".weight", f"{lab}/{cfg.arch.mlp_norm}", div("mlp"))
            return g.op("Add", [a, self._mlp(g, h, i, plan)], f"{lab}/parallel_Add"), resid
        if cfg.arch.post_attn_norm:
            a = self.rms(g, a, p + cfg.arch.post_attn_norm + ".weight", f"{lab}/post_attn_norm")
        h, resid = self.skip_rms(g, a, resid, p + cfg.arch.mlp_norm + ".weight", f"{lab}/{cfg.arch.mlp_norm}",
                                 div("mlp"))
        m = self._scaled(g, self._mlp(g, h, i, plan), cfg.residual_multiplier, f"{i}/mlp")
        if cfg.arch.post_mlp_norm:
            m = self.rms(g, m, p + cfg.arch.post_mlp_norm + ".weight", f"{lab}/post_mlp_norm")
        return m, resid

    def _post_norm_layer(self, g: GraphWriter, i: int, pending: str, resid: str | None, ctx: dict,
                         plan: LayerPlan) -> tuple[str, str]:
        """x += norm(attention(x)); x += norm(mlp(x)) (OLMo 2: no norm before either)."""
        cfg, p, lab = self.cfg, f"model.layers.{i}.", f"/model/layers.{i}"
        x = pending if resid is None else g.op("Add", [pending, resid], f"{lab}/residual_Add")
        a = self.rms(g, self._attention(g, x, i, ctx, plan), p + cfg.arch.post_attn_norm + ".weight",
                     f"{lab}/post_attn_norm")
        x = g.op("Add", [x, a], f"{lab}/attn_residual_Add")
        m = self.rms(g, self._mlp(g, x, i, plan), p + cfg.arch.post_mlp_norm + ".weight", f"{lab}/post_mlp_norm")
        return m, x

    def plan(self, i: int) -> LayerPlan:
        """Layer i's quantization plan (pressa.quant.plan): the weights to write and what is folded."""
        load = {k: (lambda k=k: self.stacked(i, k)) for k in LINEARS}
        bits = {k: self.bits_for(f"{i}.{k}") for k in LINEARS}
        settings = QuantSettings(self.o.algorithm, self.o.block_size, self.o.symmetric,
                                 {k: self.group_for(f"{i}.{k}") for k in LINEARS})
        plan = plan_layer(i, load, bits, self.calib, settings, self.cfg.intermediate_size)
        self.awq_scales = {f"{i}.{key}": s for key, s in plan.scales.items()}
        if self.record is not None:
            for key, s in plan.scales.items():
                self.record.setdefault(f"{i}.{key}", {})["awq_scale"] = s
        return plan

    def stacked(self, i: int, key: str, suffix: str = ".weight") -> np.ndarray | None:
        """Layer i's linear `key` (qkv, o, gate_up, down) as one tensor: its parts as the row names them
        (Arch.linear_parts), stacked along the output axis. Biases (suffix .bias) are optional: None
        when a part has none."""
        parts = [n + suffix for n in self.cfg.arch.linear_parts(i)[key]]
        if suffix == ".bias":
            found = [self.opt(n) for n in parts]
            return np.concatenate(found) if all(b is not None for b in found) else None
        return self.read(parts[0]) if len(parts) == 1 else np.concatenate([self.read(n) for n in parts])

    def _attention(self, g: GraphWriter, h: str, i: int, ctx: dict, plan: LayerPlan) -> str:
        cfg, p, lab = self.cfg, f"model.layers.{i}.self_attn.", f"/model/layers.{i}/attn"
        sizes = [cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim]
        w = plan.weight("qkv")
        qkv = self.linear(g, h, f"{p}qkv_proj", w, self.stacked(i, "qkv", ".bias"), f"{i}.qkv", plan.bits["qkv"])
        del w
        if cfg.arch.qk_norm:
            q, k, v = g.node("Split", [qkv, g.const(f"{lab}/split_sizes", sizes)], f"{lab}/Split", 3, axis=-1)
            norm = self.rms if cfg.arch.qk_norm_whole else self._head_norm
            q, k = norm(g, q, p + "q_norm.weight", f"{lab}/q_norm"), norm(g, k, p + "k_norm.weight", f"{lab}/k_norm")
            qkv_in = [q, k, v]
        else:
            qkv_in = [qkv, "", ""]
        sliding = cfg.layer_sliding[i] if cfg.layer_sliding else False
        rope = ctx["rope"] if cfg.layer_rotary[i] else {}
        cos_sin = list(rope["local" if sliding and "local" in rope else "global"]) if rope else []
        outs = [f"{lab}/GroupQueryAttention/output_0", present(i, "key"), present(i, "value")]
        g.node("GroupQueryAttention",
               qkv_in + [past(i, "key"), past(i, "value"), ctx["seqlens"], ctx["total"]] + cos_sin,
               f"{lab}/GroupQueryAttention", 3, MS, outputs=outs,
               num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads, do_rotary=int(bool(rope)),
               rotary_interleaved=int(cfg.arch.rotary_interleaved),
               scale=cfg.attn_scale, softcap=cfg.attn_softcap or None,
               local_window_size=int(cfg.sliding_window) if sliding and cfg.sliding_window else -1)
        for kv in ("key", "value"):
            g.add_output(present(i, kv), self.onnx_dtype,
                         ["batch_size", cfg.num_kv_heads, "total_sequence_length", cfg.head_dim])
        return self.linear(g, outs[0], f"{p}o_proj", plan.weight("o"), self.opt(p + "o_proj.bias"), f"{i}.o",
                           plan.bits["o"], plan.input_scales.get("o"))

    def _head_norm(self, g: GraphWriter, x: str, wname: str, lab: str) -> str:
        cfg = self.cfg
        shape4 = g.const(f"{lab}/shape4", [0, 0, -1, cfg.head_dim])
        shape3 = g.const(f"{lab}/shape3", [0, 0, -1])
        x4 = g.op("Reshape", [x, shape4], f"{lab}/Reshape")
        n = self.rms(g, x4, wname, f"{lab}/SimplifiedLayerNormalization")
        return g.op("Reshape", [n, shape3], f"{lab}/Reshape_back")

    def _mlp(self, g: GraphWriter, h: str, i: int, plan: LayerPlan) -> str:
        cfg, p, lab = self.cfg, f"model.layers.{i}.mlp.", f"/model/layers.{i}/mlp"
        if cfg.layer_moe and cfg.layer_moe[i]:
            return moe_mlp(self, g, h, i)
        w = plan.weight("gate_up")
        if not cfg.arch.gated_mlp:                   # act(up) @ down
            up = self.linear(g, h, f"{p}up_proj", w, self.stacked(i, "gate_up", ".bias"), f"{i}.gate_up",
                             plan.bits["gate_up"])
            return self.linear(g, self._act(g, up, lab), f"{p}down_proj", plan.weight("down"),
                               self.opt(p + "down_proj.bias"), f"{i}.down", plan.bits["down"])
        bias = None
        if cfg.mlp_bias:
            up = self.read(p + "up_proj.bias") / plan.up_bias_divisor
            bias = np.concatenate([self.read(p + "gate_proj.bias"), up])
        gu = self.linear(g, h, f"{p}gate_up_proj", w, bias, f"{i}.gate_up", plan.bits["gate_up"])
        del w
        gate, up = g.node("Split", [gu, g.const(f"{lab}/split_sizes", [cfg.intermediate_size] * 2)],
                          f"{lab}/Split", 2, axis=-1)
        act = self._act(g, gate, lab)
        y = g.op("Mul", [act, up], f"{lab}/Mul")
        return self.linear(g, y, f"{p}down_proj", plan.weight("down"), self.opt(p + "down_proj.bias"), f"{i}.down",
                           plan.bits["down"])

    def _act(self, g: GraphWriter, x: str, lab: str) -> str:
        act = self.cfg.hidden_act
        if act in ("silu", "swish"):
            return g.op("Mul", [x, g.op("Sigmoid", [x], f"{lab}/Sigmoid")], f"{lab}/act_Mul")
        if act in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            return g.op("FastGelu", [x], f"{lab}/FastGelu", domain=MS)
        if act == "gelu":
            return g.op("Gelu", [x], f"{lab}/Gelu", domain=MS)
        raise BadArgument(f"activation {act!r} is not supported (silu, gelu, gelu_pytorch_tanh)")
