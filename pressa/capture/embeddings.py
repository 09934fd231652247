"""The ends of the decoder graph: the token embedding (a tied one quantized once and shared with the
lm_head) and the lm_head; big float weights written and quantized a few thousand rows at a time where
the source reads rows alone. A mixin of DecoderBuilder (pressa.capture.decoder)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from pressa.artifact.llm_io import LOGITS
from pressa.capture.onnx_writer import MS, GraphWriter
from pressa.quant.packing import packed_by_rows
from pressa.quant.rtn import fp16_exact


def embedding_block(hidden: int, block_size: int) -> int:
    """Group size of the tied embedding: GatherBlockQuantized returns rows as wide as its padded blocks,
    so the group must divide the hidden size (576 with --group-size 128 takes 64); the lm_head reads the
    same bytes with the same group."""
    return next((b for b in (block_size, 128, 64, 32, 16) if b <= block_size and hidden % b == 0), block_size)


class EmbeddingEmitters:
    def _scaled(self, g: GraphWriter, x: str, factor: float, label: str) -> str:
        """x * factor (Granite's multipliers), or x when the factor is 1."""
        if factor == 1.0:
            return x
        return g.op("Mul", [x, g.weight(f"/model/{label}/multiplier", np.asarray(factor, self.np_dtype))],
                    f"/model/{label}/multiplier_Mul")

    def _embed(self, g: GraphWriter, ids: str) -> tuple[str, tuple | None]:
        """(embeddings, tied): with a tied quantized embedding, (its weight, its packed tensors) for the
        lm_head to read the same bytes."""
        cfg, tied, name = self.cfg, None, "model.embed_tokens.weight"
        if self.o.precision in ("int4", "int8") and cfg.tie_embeddings:
            # one quantized copy on disk, read by GatherBlockQuantized here and MatMulNBits in lm_head,
            # quantized a few thousand rows at a time where the source reads rows alone (never whole in fp32)
            bits = self.o.embedding_bits
            # 8 bits: symmetric, searched (one candidate is llama.cpp's Q8_0 grid, exact on such sources)
            sym = self.o.symmetric or bits == 8
            block = self.embedding_block()
            v = (self.w.shapes(name) if self.w.shapes else self.read(name).shape)[0]
            t = packed_by_rows(lambda a, b: self.w.rows(name, a, b), v, bits, block, sym,
                               self.o.scale_search and (bits == 4 or sym), 8192 if self.w.reads_rows else v)
            nb = t["B"].shape[1]
            # lm_head reuses these bytes: it keeps only their shapes (the arrays are not held to the end)
            # scales as float16 where lossless (OpenVINO's GatherBlockQuantized takes only constant scales:
            # it reads them uncast, gives float16 rows, cast after; the lm_head casts its view of them)
            half = not self.fp16 and fp16_exact(t["scales"])
            tied = (np.broadcast_to(np.float32(0), (v, cfg.hidden_size)),
                    {k: np.broadcast_to(np.zeros((), a.dtype), a.shape) for k, a in t.items()}, half)
            scales = t["scales"].astype(np.float16 if half or self.fp16 else np.float32).reshape(v, nb)
            ins = [g.weight("model.embed_tokens.qweight", t["B"], share_key=1, dims=(v, t["B"].size // v)),
                   ids, g.weight("model.embed_tokens.scales", scales, share_key=2)]
            if "zero_points" in t:
                ins.append(g.weight("model.embed_tokens.zero_points", t["zero_points"], share_key=3,
                                    dims=(v, t["zero_points"].size // v)))
            del t
            x = g.op("GatherBlockQuantized", ins, "/model/embed_tokens/GatherBlockQuantized", domain=MS,
                     gather_axis=0, quantize_axis=1, block_size=block, bits=bits)
            if half:
                x = g.op("Cast", [x], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
        else:
            x = g.op("Gather", [self.streamed(g, name, name), ids], "/model/embed_tokens/Gather")
        if cfg.arch.embed_scale:
            x = self._scaled(g, x, cfg.hidden_size ** 0.5, "embed_tokens")
        return self._scaled(g, x, cfg.embed_multiplier, "embed_multiplier"), tied

    def embedding_block(self) -> int:
        return embedding_block(self.cfg.hidden_size, self.o.block_size)

    def streamed(self, g: GraphWriter, name: str, wname: str) -> str:
        """A float weight written to the graph in row chunks where the source reads rows alone."""
        if not self.w.reads_rows or self.w.shapes is None:
            return self.fw(g, name, self.read(wname))
        shape = tuple(self.w.shapes(wname))
        return g.weight_from_chunks(name, shape, self.np_dtype, (self.w.rows(wname, a, a + 8192)
                                                                 for a in range(0, shape[0], 8192)))

    def _untied_head(self, g: GraphWriter, h: str) -> str:
        """lm_head of its own: RTN-quantized 8192 rows at a time where the source reads rows alone (GPTQ
        and other sources read it whole)."""
        bits, wname = self.bits_for("lm_head"), "lm_head.weight"
        if bits is None or not self.w.reads_rows or "lm_head" in self.calib or self.w.shapes is None:
            return self.linear(g, h, "lm_head", self.read(wname), self.opt("lm_head.bias"), "lm_head", bits)
        v, k = self.w.shapes(wname)
        packed = packed_by_rows(lambda a, b: self.w.rows(wname, a, b), v, bits, self.group_for("lm_head"),
                                self.o.symmetric, self.searching(bits))
        y = self.matmul_nbits(g, h, "lm_head", np.broadcast_to(np.float32(0), (v, k)), bits, packed=packed,
                              key="lm_head")
        bias = self.opt("lm_head.bias")
        return y if bias is None else g.op("Add", [y, self.fw(g, "lm_head.bias", bias)], "lm_head/Add")

    def _lm_head(self, g: GraphWriter, h: str, ids: str, tied: tuple | None) -> None:
        cfg = self.cfg
        name = "lm_head"
        if tied is not None:
            w, packed, half = tied
            logits = self.matmul_nbits(g, h, name, w, self.o.embedding_bits, share_key=1, packed=packed,
                                       block_size=self.embedding_block(), half_scales=half)
        elif cfg.tie_embeddings:
            # Gemm with transB reads the embedding initializer itself: one copy on disk
            flat = g.op("Reshape", [h, g.const("/lm_head/flat", [-1, cfg.hidden_size])], "/lm_head/Reshape")
            y = g.op("Gemm", [flat, "model.embed_tokens.weight"], "/lm_head/Gemm", transB=1)
            shape = g.op("Concat", [g.op("Shape", [h], "/lm_head/Shape", end=-1),
                                    g.const("/lm_head/vocab", [cfg.vocab_size])], "/lm_head/Concat", axis=0)
            logits = g.op("Reshape", [y, shape], "/lm_head/Reshape_out")
        else:
            logits = self._untied_head(g, h)
        if self.fp16:
            logits = g.op("Cast", [logits], "/lm_head/Cast", to=TensorProto.FLOAT)
        if cfg.logits_divisor != 1.0:
            logits = g.op("Div", [logits, g.weight("/lm_head/divisor", np.asarray(cfg.logits_divisor, np.float32))],
                          "/lm_head/Div")
        if cfg.final_softcap:
            c = g.weight("/lm_head/softcap", np.asarray(cfg.final_softcap, np.float32))
            logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, c], "/lm_head/softcap_Div")],
                                       "/lm_head/Tanh"), c], "/lm_head/softcap_Mul")
        g.node("Identity", [logits], "/lm_head/logits", outputs=[LOGITS])
