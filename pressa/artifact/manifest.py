"""pressa.json: one schema for every artifact, one writer. It records where the model came from, the
passes that made it (each with its config and report), and the workflow that rebuilds it:
`pressa run --config ARTIFACT/pressa.json -o NEW`."""

from __future__ import annotations

import platform
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pressa.artifact.folder import folder_size, now_iso, read_json, write_json
from pressa.artifact.kind import ArtifactKind

MANIFEST = "pressa.json"


class Manifest(BaseModel):
    """What every artifact's pressa.json holds; kind-specific facts (a decoder's graph and settings,
    an ONNX model's inputs and outputs) ride along as extra keys."""
    model_config = ConfigDict(extra="allow")
    pressa_version: str = ""
    created: str = Field(default_factory=now_iso)
    kind: ArtifactKind
    source: dict = Field(default_factory=dict, description="where the first input came from")
    passes: list[dict] = Field(default_factory=list, description="the source, then each pass: config, report")
    workflow: dict | None = Field(None, description="a workflow config that rebuilds this artifact")
    versions: dict = Field(default_factory=dict)
    size_bytes: int = 0


def versions() -> dict:
    import numpy as np
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def write_manifest(folder: Path, manifest: Manifest) -> dict:
    """Write `folder/pressa.json` (its size counted over the folder as it is now); returns it as a dict."""
    from pressa import __version__

    manifest.pressa_version = __version__
    manifest.versions = manifest.versions or versions()
    manifest.size_bytes = folder_size(folder)
    data = manifest.model_dump(mode="json", exclude_none=True)
    write_json(Path(folder) / MANIFEST, data)
    return data


def read_manifest(folder: Path) -> dict:
    p = Path(folder) / MANIFEST
    return read_json(p) if p.is_file() else {}


def is_manifest(config: dict) -> bool:
    """A pressa.json given as a workflow config (it carries the workflow that made it)."""
    return "pressa_version" in config and isinstance(config.get("workflow"), dict)


def write_onnx_manifest(folder: Path, source, pass_name: str, config: dict, report: dict, seconds: float,
                        base: dict | None = None, workflow: dict | None = None) -> dict:
    """Copy the source's companion files, and write pressa.json: the source's history plus this pass."""
    from pressa.graph.onnx_io import copy_companions, graph_io, load_model, model_folder

    src_folder = model_folder(source)
    copy_companions(src_folder, folder)
    prev = base if base is not None else (read_manifest(src_folder) if Path(source).is_dir() else {})
    history = list(prev.get("passes", [])) or [{"pass": "source", "location": str(source)}]
    history.append({"pass": pass_name, "config": config, "seconds": round(seconds, 2),
                    **{k: v for k, v in report.items() if k not in ("inputs", "outputs")}})
    io = graph_io(load_model(folder / "model.onnx", load_data=False))
    return write_manifest(folder, Manifest(
        kind=ArtifactKind.ONNX, source=prev.get("source", {"location": str(source)}), passes=history,
        workflow=workflow, task=report.get("task", prev.get("task")), **io,
        num_heads=report.get("num_heads", prev.get("num_heads")),
        model_type=report.get("model_type", prev.get("model_type"))))
