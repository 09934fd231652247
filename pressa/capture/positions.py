"""Where tokens sit: rotary caches, learned position embeddings, and each row's last token, emitted
into the decoder graph (a mixin of pressa.capture.decoder.DecoderBuilder)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from pressa.capture.onnx_writer import GraphWriter
from pressa.capture.rope import inv_freq

LAST_TOKEN_NODE = "/model/last_token/GatherND"


class PositionEmitters:
    def _last_token(self, g: GraphWriter, h: str, ids: str, ctx: dict) -> str:
        """Each row's last real token: index seqlens_k - (total - S), clamped to [0, S-1] (right
        padding in a first prompt; 0 in decode). Eval swaps this node for an Identity to get every
        position (see genai.decoder_session.all_logits_variant)."""
        lab = "/model/last_token"
        s = g.op("Cast", [g.op("Gather", [g.op("Shape", [ids], f"{lab}/Shape"), g.const(f"{lab}/idx1", 1)],
                                f"{lab}/Gather", axis=0)], f"{lab}/Cast_S", to=TensorProto.INT32)
        past = g.op("Sub", [ctx["total"], s], f"{lab}/Sub_past")
        idx = g.op("Sub", [ctx["seqlens"], past], f"{lab}/Sub_idx")
        zero = g.const(f"{lab}/zero", 0, np.int32)
        hi = g.op("Sub", [s, g.const(f"{lab}/one", 1, np.int32)], f"{lab}/Sub_hi")
        idx = g.op("Cast", [g.op("Clip", [idx, zero, hi], f"{lab}/Clip")], f"{lab}/Cast_idx", to=TensorProto.INT64)
        idx = g.op("Unsqueeze", [idx, g.const(f"{lab}/axes", [1, 2])], f"{lab}/Unsqueeze")
        return g.op("GatherND", [h, idx], LAST_TOKEN_NODE, batch_dims=1)

    def _positions(self, g: GraphWriter, x: str, ids: str, ctx: dict) -> str:
        """x + the learned position embeddings of each token: row r's new tokens sit at
        max(0, seqlens_k[r] + 1 - S) + [0, S) (a right-padded first prompt from 0; a step at the row's
        own length)."""
        lab = "/model/embed_positions"
        s = g.op("Gather", [g.op("Shape", [ids], f"{lab}/Shape"), g.const(f"{lab}/idx1", 1)], f"{lab}/Gather_S",
                 axis=0)
        seqlens = g.op("Cast", [ctx["seqlens"]], f"{lab}/Cast", to=TensorProto.INT64)
        start = g.op("Sub", [g.op("Add", [seqlens, g.const(f"{lab}/one", 1)], f"{lab}/Add"), s], f"{lab}/Sub")
        start = g.op("Max", [start, g.const(f"{lab}/zero", 0)], f"{lab}/Max")
        steps = g.op("Range", [g.const(f"{lab}/r0", 0), s, g.const(f"{lab}/r1", 1)], f"{lab}/Range")
        pos = g.op("Add", [g.op("Unsqueeze", [start, g.const(f"{lab}/axes", [1])], f"{lab}/Unsqueeze"), steps],
                   f"{lab}/Add_positions")
        table = self.fw(g, "model.embed_positions.weight", self.read("model.embed_positions.weight"))
        return g.op("Add", [x, g.op("Gather", [table, pos], f"{lab}/Gather")], f"{lab}/Add_embeddings")

    def _rope(self, g: GraphWriter) -> dict:
        cfg = self.cfg
        if cfg.arch.positions != "rotary":
            return {}
        out = {"global": self._rope_tables(g, cfg.rope, "")}
        if cfg.local_rope is not None and any(cfg.layer_sliding):
            out["local"] = self._rope_tables(g, cfg.local_rope, "_local")
        return out

    def _rope_tables(self, g: GraphWriter, rope, suffix: str) -> tuple[str, str]:
        """cos_cache and sin_cache [context, rotary_dim / 2] as nodes over constants (positions times the
        inverse frequencies, then Cos and Sin, as pressa.capture.rope.rope_cache computes them): the
        runtimes fold them into tables when the session loads, so the file carries no tables (2.1 MB
        for SmolLM2's 8,192 positions, 8.4 MB for Qwen2.5's 32,768)."""
        freq, attn = inv_freq(rope, self.cfg.rotary_dim, self.cfg.max_position)
        lab = f"/model/rotary{suffix}"
        ends = [g.weight(f"{lab}/{n}", np.float32(v), dims=()) for n, v in (("start", 0), ("limit", self.context),
                                                                             ("delta", 1))]
        positions = g.op("Range", ends, f"{lab}/Range")
        column = g.op("Unsqueeze", [positions, g.const(f"{lab}/axes", [1])], f"{lab}/Unsqueeze")
        angles = g.op("Mul", [column, g.const(f"{lab}/inv_freq", freq[None, :], np.float32)], f"{lab}/Mul")
        tables = []
        for fn in ("Cos", "Sin"):
            t = g.op(fn, [angles], f"{lab}/{fn}")
            if attn != 1.0:
                t = g.op("Mul", [t, g.const(f"{lab}/{fn}_attn", attn, np.float32)], f"{lab}/{fn}_attn")
            if self.fp16:
                t = g.op("Cast", [t], f"{lab}/{fn}_Cast", to=TensorProto.FLOAT16)
            tables.append(g.node("Identity", [t], f"{lab}/{fn.lower()}_cache",
                                 outputs=[f"{fn.lower()}_cache{suffix}"])[0])
        return tables[0], tables[1]
