"""Artifacts: folders written atomically and never over their inputs (folder), their kind decided in
one place (kind), one manifest schema and writer (manifest), and the decoder LLM's I/O contract
(llm_io)."""

from pressa.artifact.folder import (
    Interrupted,
    atomic_folder,
    check_output,
    check_writable,
    folder_size,
    guard_inputs,
    now_iso,
    read_json,
    signals_as_exceptions,
    write_json,
)
from pressa.artifact.kind import ArtifactKind, kind_of, require_kind
from pressa.artifact.manifest import MANIFEST, Manifest, is_manifest, read_manifest, write_manifest

__all__ = ["Interrupted", "atomic_folder", "check_output", "check_writable", "folder_size", "guard_inputs",
           "now_iso", "read_json", "signals_as_exceptions", "write_json", "ArtifactKind", "kind_of", "require_kind",
           "MANIFEST", "Manifest", "is_manifest", "read_manifest", "write_manifest"]
