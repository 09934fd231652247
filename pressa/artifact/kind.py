"""What kind of artifact a path holds, decided here and nowhere else."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pressa.artifact.llm_io import GENAI_CONFIG

IR_MODEL = "openvino_model.xml"      # an OpenVINO IR folder's graph (pressa export --format openvino)


class ArtifactKind(StrEnum):
    DECODER_LLM = "decoder-llm"      # built by auto-opt: a KV-cache decoder graph with genai_config.json
    ONNX = "onnx"                    # any other model: an .onnx file or a folder holding one (or its IR)
    LORA_ADAPTER = "lora-adapter"    # made by finetune: a PEFT adapter (adapter_config.json, adapter_model.safetensors)


def kind_of(path: Path) -> ArtifactKind | None:
    p = Path(path)
    folder = p.parent if p.is_file() else p
    if (folder / GENAI_CONFIG).is_file() and (p.is_dir() or p.suffix == ".onnx"):
        return ArtifactKind.DECODER_LLM
    if (p.is_file() and p.suffix == ".onnx") or (p.is_dir() and (any(p.glob("*.onnx")) or (p / IR_MODEL).is_file())):
        return ArtifactKind.ONNX
    return None


def require_kind(path: Path, want: ArtifactKind, command: str) -> ArtifactKind:
    """Check, before a command runs, that `path` is the kind of model it takes."""
    from pressa.errors import BadArgument, SourceNotFound

    p = Path(path)
    wanted = f"an artifact folder made by auto-opt (with {GENAI_CONFIG})" if want == ArtifactKind.DECODER_LLM \
        else "an .onnx file or an artifact folder made by pressa"
    if not p.exists():
        raise SourceNotFound(f"{p}: no such file or folder; pass {wanted}")
    kind = kind_of(p)
    if kind is None:
        raise SourceNotFound(f"{p}: not a model pressa can run (no .onnx file or {GENAI_CONFIG}); pass {wanted}")
    if kind == ArtifactKind.DECODER_LLM and want == ArtifactKind.ONNX:
        raise BadArgument(f"{p} is a text-generation artifact made by auto-opt; `pressa {command}` would break it "
                          f"(its KV-cache graph and {GENAI_CONFIG}): choose its precision with `pressa auto-opt "
                          "--precision`")
    if kind == ArtifactKind.ONNX and want == ArtifactKind.DECODER_LLM:
        raise BadArgument(f"{p} is not a text generator (no {GENAI_CONFIG}); `pressa {command}` runs artifacts "
                          "made by auto-opt: for this model use `pressa embed`, `compare` or `serve`")
    return kind
