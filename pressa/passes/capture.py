"""Capture: a Hugging Face model (folder, bundled name or Hub id) exported to ONNX by task."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pressa.passes.base import Pass, PassConfig, PassContext


class CaptureConfig(PassConfig):
    task: str = Field("feature-extraction", description="feature-extraction, text-classification, "
                                                         "token-classification, question-answering, fill-mask, "
                                                         "image-classification")
    opset: int = Field(18, ge=14, description="ONNX opset of the exported graph")


class Capture(Pass):
    name = "capture"
    aliases = ("OnnxConversion", "Conversion")
    summary = "Hugging Face model -> ONNX (torch.onnx dynamo exporter), checked against torch"
    Config = CaptureConfig
    input_kind = "hf"

    def run(self, model_path: Path, config: CaptureConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.capture.export import capture_hf

        return capture_hf(Path(model_path), config.task, out_dir, config.opset,
                          progress=lambda s: ctx.progress(0, 1, s))
