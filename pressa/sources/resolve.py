"""Where a Hugging Face model lives on this machine: a folder, a bundled name or a Hub id."""

from __future__ import annotations

from pathlib import Path

from pressa.errors import SourceNotFound


def resolve_hf_folder(spec: str) -> Path:
    """A local Hugging Face folder for a path, a bundled name or a Hub id."""
    from pressa.sources.bundled import bundled_folder
    from pressa.sources.hub import hub_folder, looks_like_hub_id

    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SourceNotFound(f"{p}: no config.json; pass a Hugging Face model folder (or an .onnx file to "
                                 "the other commands)")
        return p
    if p.is_file():
        raise SourceNotFound(f"{p}: capture takes a Hugging Face model folder, a bundled name or a Hub id; "
                             "an .onnx file needs no capture")
    found = bundled_folder(spec)
    if found is not None:
        return found
    if looks_like_hub_id(spec):
        return hub_folder(spec, patterns=["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*",
                                          "2_Normalize/*"])
    raise SourceNotFound(f"{spec}: no such folder (and not a bundled name or a Hub id like org/name)")
