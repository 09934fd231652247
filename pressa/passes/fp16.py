"""float32 -> float16 weights and compute, inputs and outputs kept float32 by default (Casts at the
edges), ops that need float32 for range (e.g. Softmax inside fused attention is internal) left as ONNX
Runtime's converter decides."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pressa.passes.base import Pass, PassConfig, PassContext


class Fp16Config(PassConfig):
    keep_io_types: bool = Field(True, description="keep float32 graph inputs and outputs (Casts added)")
    op_block_list: list[str] = Field(default_factory=list, description="op types kept in float32")


class Float16Conversion(Pass):
    name = "convert-fp16"
    aliases = ("OnnxFloatToFloat16", "Float16Conversion", "FP16Conversion")
    summary = "float16 weights and compute (for GPUs; on CPU usually slower)"
    Config = Fp16Config

    def run(self, model_path: Path, config: Fp16Config, out_dir: Path, ctx: PassContext) -> dict:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        from pressa.graph.onnx_io import load_model, save_model

        model = load_model(model_path)
        block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list))
        half = convert_float_to_float16(model, keep_io_types=config.keep_io_types, op_block_list=block,
                                        disable_shape_infer=True)
        save_model(half, out_dir)
        return {"op_block_list": config.op_block_list}
