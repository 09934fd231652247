"""How a model is run, the same words for either runtime (ONNX Runtime, OpenVINO): OpenVINO's names
for devices and hints where it has them. Declared once here: the commands that run a model take
these as flags (cli/options.py), `pressa.load` as keyword arguments, models.yaml as keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# pressa's device words and OpenVINO's spellings of them
OPENVINO_DEVICES = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU", "auto": "AUTO", "npu": "NPU"}


def openvino_device(device: str) -> str:
    """OpenVINO's spelling of a device (cpu -> CPU, gpu.1 -> GPU.1; its names are upper case)."""
    return OPENVINO_DEVICES.get(device.lower(), device.upper())


def onnxruntime_device(device: str) -> str:
    """ONNX Runtime's word for a device given in OpenVINO's spelling (CPU -> cpu, GPU -> gpu)."""
    return {"CPU": "cpu", "GPU": "gpu"}.get(device, device)


class RuntimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["onnxruntime", "openvino", "auto"] = Field(
        "onnxruntime", description="the runtime: onnxruntime, openvino, or auto (the faster here for this model "
                                   "and hint, measured once and remembered)")
    device: str = Field("cpu", description="cpu or gpu; on OpenVINO also CPU, GPU, GPU.1, NPU, AUTO, HETERO:GPU,CPU")
    hint: Literal["latency", "throughput", "cumulative-throughput"] = Field(
        "latency", description="performance hint (OpenVINO's PERFORMANCE_HINT; on ONNX Runtime latency spins "
                               "threads on the physical cores, throughput does not)")
    threads: int | None = Field(None, ge=1, description="intra-op threads (default: physical cores)")
    streams: str | None = Field(None, description="OpenVINO's NUM_STREAMS: a number or auto")
    precision_hint: Literal["f32", "bf16", "f16"] | None = Field(
        None, description="OpenVINO's INFERENCE_PRECISION_HINT (default: the device's, bf16 on CPUs that have it)")
    cache_dir: Path | None = Field(None, description="OpenVINO's compiled-model cache (the second load is faster)")

    @field_validator("streams")
    @classmethod
    def _streams(cls, v):
        if v is not None and v.lower() != "auto" and not v.isdigit():
            raise ValueError(f"streams {v!r}: give a number or auto")
        return v


def runtime_options(**given) -> RuntimeOptions:
    """RuntimeOptions from keyword arguments (pressa.load's, a command's flags); a bad value is one line."""
    from pydantic import ValidationError

    from pressa.errors import BadArgument, validation_message

    try:
        return RuntimeOptions(**{k: str(v) if k == "streams" and v is not None else v for k, v in given.items()})
    except ValidationError as err:
        raise BadArgument(validation_message(err, given=given)) from None
