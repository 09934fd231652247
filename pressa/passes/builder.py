"""ModelBuilder: a decoder LLM built from its weights into ONNX Runtime's fused operators (the same
builder as `pressa auto-opt`), as a pass the workflow engine can search over."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pressa.passes.base import Pass, PassConfig, PassContext


class BuilderConfig(PassConfig):
    precision: Literal["fp32", "fp16", "int8", "int4"] = Field("int4", description="weight precision")
    group_size: Literal[16, 32, 64, 128, 256] = Field(32, description="quantization group size")
    symmetric: bool = Field(False, description="groups without zero points")
    ratio: float = Field(1.0, ge=0, le=1, description="int4 share of MatMul weights; the most sensitive stay int8")
    algorithm: Literal["rtn", "awq", "gptq"] = Field("rtn", description="rtn, or awq/gptq with calibration_data")
    calibration_data: str | None = Field(None, description="text file for awq/gptq and data-aware ratio")
    accuracy_level: int = Field(4, ge=0, le=4, description="MatMulNBits compute: 4 = int8 activations")
    embedding_bits: Literal[4, 8] = Field(8, description="tied embedding / lm_head bits")
    execution_provider: str = Field("cpu", description="cpu or cuda (genai_config's provider)")


class ModelBuilder(Pass):
    name = "model-builder"
    aliases = ("ModelBuilder", "auto-opt", "AutoOpt")
    summary = "decoder LLM built from its weights with fused ops (int4/int8/fp16/fp32)"
    Config = BuilderConfig
    input_kind = "llm"

    def run(self, model_path: Path, config: BuilderConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.capture.decoder import BuildOptions
        from pressa.capture.llm import build_llm_into

        opts = BuildOptions(precision=config.precision, block_size=config.group_size, symmetric=config.symmetric,
                            accuracy_level=config.accuracy_level, embedding_bits=config.embedding_bits,
                            algorithm=config.algorithm)
        text = Path(config.calibration_data).read_text(errors="replace") if config.calibration_data else None
        m = build_llm_into(str(model_path), out_dir, opts, ratio=config.ratio, provider=config.execution_provider,
                           progress=ctx.progress, calibration_text=text)
        return {"kind": "decoder-llm", "size_bytes": m["size_bytes"], "build_seconds": m["build_seconds"]}
