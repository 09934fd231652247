"""The ends of the decoder graph: the token embedding (a tied one quantized once and shared with the
lm_head) and the lm_head; big float weights written and quantized a few thousand rows at a time where
the source reads rows alone. A mixin of DecoderBuilder (pressa.capture.decoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto

from pressa.artifact.llm_io import LOGITS
from pressa.capture.onnx_writer import MS, GraphWriter
from pressa.quant.packing import matmulnbits_tensors, packed_by_rows
from pressa.quant.rtn import QuantizedWeight, fp16_exact, stack_rows

HIDDEN = "hidden"        # a one-layer (or head) graph's input (DecoderBuilder.build_layer, build_head)
HEAD = "lm_head"         # the lm_head's key in calibration statistics and decisions


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
        cfg, tied = self.cfg, None
        if self.o.precision in ("int4", "int8"):
            x, tied = self._quantized_embedding(g, ids)
        else:
            name = "model.embed_tokens.weight"
            x = g.op("Gather", [self.streamed(g, name, name), ids], "/model/embed_tokens/Gather")
        if cfg.arch.embed_scale:
            x = self._scaled(g, x, cfg.hidden_size ** 0.5, "embed_tokens")
        return self._scaled(g, x, cfg.embed_multiplier, "embed_multiplier"), tied

    def _quantized_embedding(self, g: GraphWriter, ids: str) -> tuple[str, tuple | None]:
        """The token embedding at --embedding-bits, read by GatherBlockQuantized (a few rows a token, so an
        8B model's untied embedding costs no decode time, and 1.9 GB less than float32 on disk). A tied one
        is one copy on disk that the lm_head's MatMulNBits reads too (returned as `tied`), GPTQ'd as the
        lm_head where calibration decided it; quantized a few thousand rows at a time where the source
        reads rows alone (never whole in fp32)."""
        cfg, name, bits = self.cfg, "model.embed_tokens.weight", self.o.embedding_bits
        block, sym, search = self.embedding_grid()
        v = self.shape(name)[0]
        calibrated = getattr(self.calib.get(HEAD), "quantized", None) if cfg.tie_embeddings else None
        t = (matmulnbits_tensors(calibrated) if calibrated is not None else
             packed_by_rows(lambda a, b: self.w.rows(name, a, b), v, bits, block, sym, search,
                            8192 if self.w.reads_rows else v))
        nb = t["B"].shape[1]
        # scales as float16 where lossless (OpenVINO's GatherBlockQuantized takes only constant scales:
        # it reads them uncast, gives float16 rows, cast after; the lm_head casts its view of them)
        half = not self.fp16 and fp16_exact(t["scales"])
        tied = None
        if cfg.tie_embeddings:    # lm_head reuses these bytes: it keeps only their shapes (the arrays are not held)
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
        return x, tied

    def embedding_block(self) -> int:
        return embedding_block(self.cfg.hidden_size, self.o.block_size)

    def embedding_grid(self) -> tuple[int, bool, bool]:
        """The token embedding's (group, symmetric, search): at 8 bits symmetric and searched (one
        candidate is llama.cpp's Q8_0 grid, exact on such sources)."""
        sym = self.o.symmetric or self.o.embedding_bits == 8
        return self.embedding_block(), sym, self.o.scale_search and (self.o.embedding_bits == 4 or sym)

    def build_head(self, path: Path) -> None:
        """The final norm alone as a graph (layer-by-layer calibration of the lm_head): the hidden state
        after the last layer in, the lm_head's input out as calib.lm_head."""
        g = GraphWriter(path)
        try:
            x = g.add_input(HIDDEN, TensorProto.FLOAT, ["batch_size", "sequence_length", self.cfg.hidden_size])
            g.node("Identity", [self.rms(g, x, "model.norm.weight", "/model/norm")], "/calib/lm_head",
                   outputs=[f"calib.{HEAD}"])
            g.add_output(f"calib.{HEAD}", TensorProto.FLOAT, None)
            g.save()
        finally:
            g.abort()

    def head_weight(self) -> tuple[str, int | None, tuple[int, bool, bool] | None]:
        """(the lm_head's source weight, its bits (None: float), its grid where not the linears')."""
        if self.cfg.tie_embeddings:
            quantized = self.o.precision in ("int4", "int8")
            return "model.embed_tokens.weight", self.o.embedding_bits if quantized else None, self.embedding_grid()
        return "lm_head.weight", self.bits_for(HEAD), None

    def quantize_head(self, rows: int = 8192) -> QuantizedWeight:
        """The lm_head's weight quantized with its calibration statistics (self.calib["lm_head"]) `rows`
        at a time (rows are quantized independently given H), recorded under "lm_head"."""
        name, bits, grid = self.head_weight()
        v = self.shape(name)[0]
        out = stack_rows([self.quantize(self.w.rows(name, a, min(v, a + rows)), bits, HEAD, grid)
                          for a in range(0, v, rows)])
        if self.record is not None:
            self.record[HEAD] = {"quantized": out}
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        """A source tensor's shape (CorruptModel, as `read` says, where the checkpoint lacks it)."""
        return self.w.shape(name) if name in self.w else self.read(name).shape

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
        bits, wname = self.bits_for(HEAD), "lm_head.weight"
        calibrated = getattr(self.calib.get(HEAD), "quantized", None)
        if bits is None or self.w.shapes is None or (calibrated is None and (not self.w.reads_rows
                                                                             or HEAD in self.calib)):
            return self.linear(g, h, "lm_head", self.read(wname), self.opt("lm_head.bias"), HEAD, bits)
        v, k = self.w.shapes(wname)
        packed = (matmulnbits_tensors(calibrated) if calibrated is not None else
                  packed_by_rows(lambda a, b: self.w.rows(wname, a, b), v, bits, self.group_for(HEAD),
                                 self.o.symmetric, self.searching(bits)))
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
