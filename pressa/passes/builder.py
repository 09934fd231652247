"""ModelBuilder: a decoder LLM built from its weights into ONNX Runtime's fused operators (the same
builder as `pressa auto-opt`), as a pass the workflow engine can search over."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pressa.passes.base import Pass, PassConfig, PassContext, olive


class BuilderConfig(PassConfig):
    """auto-opt's options, declared here only: the CLI, workflow configs and pressa.json all use them."""
    precision: Literal["fp32", "fp16", "int8", "int4"] = Field("int4", description="weight precision (fp16 for GPU)")
    group_size: int = Field(32, description="quantization group size along the input axis: 16, 32, 64, 128 or 256",
                            json_schema_extra=olive("int4_block_size", "block_size"))
    symmetric: bool = Field(False, description="symmetric groups (no zero points) or asymmetric",
                            json_schema_extra=olive("int4_is_symmetric"))
    scale_search: bool = Field(True, description="pick each group's scale and zero point by least squared error "
                                                 "(else plain min/max)")
    ratio: float = Field(1.0, ge=0, le=1, description="int4 only: fraction of MatMul weights (by size) in int4, the "
                         "rest int8; the most sensitive weights stay int8", json_schema_extra=olive("int4_ratio"))
    algorithm: Literal["rtn", "awq", "gptq", "awq+gptq"] = Field(
        "rtn", description="rtn (round to nearest, no data), awq (activation-aware scales), gptq (second-order, "
        "Hessian from calibration inputs) or awq+gptq (AWQ's scales, then GPTQ on the scaled weights)")
    scale_estimation: bool = Field(False, description="refine each group's scale against the calibration inputs "
                                   "(NNCF's scale estimation): after rtn or awq, or before gptq's columns move "
                                   "(act order); needs calibration_data")
    act_order: bool = Field(True, description="gptq: quantize columns in order of decreasing input energy (the "
                            "Hessian's diagonal), with each group's scale fixed beforehand")
    target_size_mb: float | None = Field(None, gt=0, description="int4 mixed precision at a size: the model files' "
                                         "MB; each linear weight gets 8, 4 or 2 bits so the model loses least")
    bits_per_weight: float | None = Field(None, gt=2, le=9, description="int4 mixed precision at a size: bits per "
                                          "parameter (codes, scales, zero points, embedding, over the model's "
                                          "parameters, as `pressa eval` reports it)")
    calibration_data: str | None = Field(None, description="text file for awq/gptq/scale estimation and data-aware "
                                         "mixed precision")
    calibration_samples: int = Field(64, ge=1, description="calibration windows drawn from the text")
    calibration_seqlen: int = Field(256, ge=8, description="tokens per calibration window")
    calibration_feed: Literal["quantized", "float"] = Field(
        "quantized", description="what enters each layer in layer-by-layer calibration: quantized (the output of "
        "the layers before it, quantized, as GPTQ's reference runs: each layer corrects the error of those before) "
        "or float (the float model's activations, as a whole-model calibration: one pass per layer instead of "
        "two, ~1.35x faster)")
    accuracy_level: int = Field(4, ge=0, le=4, description="MatMulNBits compute on CPU: 0 float activations, 4 int8 "
                                                           "activations (fastest; CUDA always uses 0)",
                                json_schema_extra=olive("int4_accuracy_level"))
    embedding_bits: Literal[4, 8] = Field(8, description="bits of the token embedding (and of a tied lm_head) in "
                                                         "int4/int8 builds")
    execution_provider: Literal["cpu", "cuda"] = Field("cpu", description="cpu or cuda (genai_config's provider)")
    adapter_path: str | None = Field(None, description="a PEFT LoRA adapter (pressa finetune's) merged into the "
                                     "weights as they stream through the builder",
                                     json_schema_extra=olive("adapter_path"))
    adapters: str | None = Field(None, description="NAME=DIR,...: PEFT LoRA adapters kept as small run-time "
                                 "weights beside the base (quantized once); each request picks one by name")
    adapter_energy: float = Field(0.95, gt=0.0, le=1.0, description="run-time adapters: each update B A kept at "
                                  "the smallest rank holding this share of its squared singular values (1.0: "
                                  "exact; 0.95 keeps ~10 of a trained r=64 adapter's ranks at +0.1% eval loss; "
                                  "decoding SmolLM2 ~1.2x the base, 1.33x exact; see README)")
    exact_speculation: bool = Field(False, description="attention that scores one new token exactly as it "
                                    "scores several, so speculative decoding's greedy output equals plain "
                                    "decoding's token for token in int4/int8 builds too (ONNX Runtime's own "
                                    "rounds one token differently; near-ties can then flip); decodes ~14% slower")

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        if v not in (16, 32, 64, 128, 256):
            raise ValueError(f"group size {v}: use 16, 32, 64, 128 or 256")
        return v

    @model_validator(mode="after")
    def _combinations(self):
        if self.ratio < 1.0 and self.precision != "int4":
            raise ValueError("ratio below 1 applies to precision int4 only")
        if self.algorithm != "rtn" and self.precision not in ("int4", "int8"):
            raise ValueError(f"algorithm {self.algorithm} applies to int4/int8 precisions")
        sized = [n for n in ("target_size_mb", "bits_per_weight") if getattr(self, n) is not None]
        if len(sized) > 1 or (sized and self.ratio < 1.0):
            raise ValueError("give one of target_size_mb, bits_per_weight and ratio")
        if sized and self.precision != "int4":
            raise ValueError(f"{sized[0]} applies to precision int4 (mixed 2/4/8-bit weights)")
        if self.exact_speculation and (self.precision == "fp16" or self.execution_provider == "cuda"):
            raise ValueError("exact_speculation is for CPU builds with float32 attention (fp32, int8, int4)")
        if self.scale_estimation and self.algorithm.endswith("gptq") and not self.act_order:
            raise ValueError("scale_estimation with gptq needs act_order (its groups are fixed beforehand)")
        return self

    def build_options(self):
        from pressa.capture.build_options import BuildOptions

        return BuildOptions(precision=self.precision, block_size=self.group_size, symmetric=self.symmetric,
                            accuracy_level=self.accuracy_level if self.execution_provider == "cpu" else 0,
                            embedding_bits=self.embedding_bits, algorithm=self.algorithm,
                            scale_search=self.scale_search, scale_estimation=self.scale_estimation,
                            act_order=self.act_order, calibration_feed=self.calibration_feed,
                            target_size_mb=self.target_size_mb, bits_per_weight=self.bits_per_weight,
                            adapter_path=self.adapter_path,
                            adapters=self.adapters, adapter_energy=self.adapter_energy,
                            exact_speculation=self.exact_speculation)


class ModelBuilder(Pass):
    name = "model-builder"
    aliases = ("ModelBuilder", "auto-opt", "AutoOpt")
    summary = "decoder LLM built from its weights with fused ops (int4/int8/fp16/fp32)"
    Config = BuilderConfig
    input_kind = "llm"

    def run(self, model_path: Path, config: BuilderConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.capture.llm import build_llm_into
        from pressa.textio import read_text

        text = ctx.extra.get("calibration_text") or (read_text(Path(config.calibration_data))
                                                     if config.calibration_data else None)
        m = build_llm_into(str(model_path), out_dir, config.build_options(), ratio=config.ratio,
                           provider=config.execution_provider, progress=ctx.progress, log=ctx.log,
                           calibration_text=text,
                           calibration_samples=config.calibration_samples,
                           calibration_seqlen=config.calibration_seqlen, workflow=ctx.workflow,
                           settings=config.model_dump(mode="json"))
        return {"kind": "decoder-llm", "size_bytes": m["size_bytes"], "build_seconds": m["build_seconds"]}
