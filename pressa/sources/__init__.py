"""Open a model from where it lives: a Hugging Face folder, a .gguf file, a Hub id, or the bundled name."""

from __future__ import annotations

from pathlib import Path

from pressa.errors import SourceNotFound
from pressa.sources.base import Source, WeightReader
from pressa.sources.bundled import DEFAULT_MODEL, bundled_path, is_bundled_name
from pressa.sources.gguf_source import open_gguf
from pressa.sources.hf import open_hf_folder
from pressa.sources.hub import looks_like_hub_id, open_hub

__all__ = ["Source", "WeightReader", "open_source", "DEFAULT_MODEL"]


def open_source(spec: str | None) -> Source:
    """`None` means the bundled default model."""
    spec = spec or DEFAULT_MODEL
    p = Path(spec).expanduser()
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "config.json").exists() and len(ggufs) == 1:
            return open_gguf(ggufs[0])
        return open_hf_folder(p)
    if p.is_file():
        if p.suffix == ".gguf":
            return open_gguf(p)
        raise SourceNotFound(f"{spec}: expected a model folder or a .gguf file")
    if is_bundled_name(spec):
        return open_gguf(bundled_path(p.name), kind="bundled")
    if looks_like_hub_id(spec):
        return open_hub(spec)
    raise SourceNotFound(f"{spec}: no such file or folder (and not a Hub id like org/name)")
