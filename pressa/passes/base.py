"""Passes: each takes a model and writes a new artifact folder. A pass declares its options once, as a
pydantic model (defaults, docs, validation); its name and Olive's names for the same work go into one
registry, filled by subclassing."""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pressa.errors import PressaError


class BadConfig(PressaError):
    """A pass option or workflow key is unknown or has a wrong value."""


class NotApplicable(PressaError):
    """The pass does not fit this model (e.g. a transformer fusion on a graph already fused); the
    workflow engine reports it and goes on without it."""


def olive(*names: str, scope: dict[str, str] | None = None) -> dict:
    """`Field(json_schema_extra=olive(...))`: how Olive spells this option (`scope`: Olive's names for the
    parts of an ignored scope). Declared on the field, so the mapping and the hints share one source."""
    return {"olive_scope": scope} if scope else {"olive": list(names)}


class PassConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    olive_ignored: ClassVar[tuple[str, ...]] = ()      # Olive options that mean nothing here (e.g. quant_mode)


def olive_names(config: type[PassConfig]) -> dict[str, str | None]:
    """Olive's option names -> pressa's ("ignored_scope.names" for a part of the scope; None: ignored)."""
    out: dict[str, str | None] = dict.fromkeys(config.olive_ignored)
    for key, f in config.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        out.update(dict.fromkeys(extra.get("olive", []), key))
        out.update({name: f"{key}.{part}" for name, part in extra.get("olive_scope", {}).items()})
    return out


class IgnoredScope(PassConfig):
    """Nodes kept in float: by exact node name, by op type, or by a regular expression on the name."""
    names: list[str] = Field(default_factory=list, description="node names")
    types: list[str] = Field(default_factory=list, description="op types, e.g. Softmax")
    patterns: list[str] = Field(default_factory=list, description="regular expressions matched on node names")

    def resolve(self, model) -> list[str]:
        nodes = [n.name for n in model.graph.node]
        by_type = {}
        for n in model.graph.node:
            by_type.setdefault(n.op_type, []).append(n.name)
        missing = [n for n in self.names if n not in set(nodes)]
        if missing:
            close = difflib.get_close_matches(missing[0], nodes, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadConfig(f"ignored scope: no node named {missing[0]!r}{hint}")
        out = set(self.names)
        for t in self.types:
            out.update(by_type.get(t, []))
        for p in self.patterns:
            try:
                rx = re.compile(p)
            except re.error as err:
                raise BadConfig(f"ignored scope: bad regular expression {p!r} ({err})") from None
            hits = [n for n in nodes if rx.search(n)]
            if not hits:
                raise BadConfig(f"ignored scope: the pattern {p!r} matches no node")
            out.update(hits)
        return sorted(out)


@dataclass
class PassContext:
    """What a pass may need besides the graph: the source folder (tokenizer, config.json), where to
    report progress and messages."""
    source_folder: Path
    progress: Callable[[int, int, str], None] = lambda done, total, desc: None
    log: Callable[[str], None] = lambda msg: None
    extra: dict = field(default_factory=dict)
    workflow: dict | None = None        # the workflow config the output's manifest records (rebuilds it)


class Pass:
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    input_kind: ClassVar[str] = "onnx"         # what it reads: onnx | hf (capture) | llm (model builder)
    output_kind: ClassVar[str] = "onnx"        # what it writes: onnx, or llm (a model folder: finetune)
    summary: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    registry: ClassVar[dict[str, type[Pass]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            for n in (cls.name, *cls.aliases):
                Pass.registry[n.lower()] = cls

    def run(self, model_path: Path, config: PassConfig, out_dir: Path, ctx: PassContext) -> dict:
        """Write model.onnx (+ data) into `out_dir`; return a report for the manifest."""
        raise NotImplementedError


def get_pass(name: str) -> type[Pass]:
    import pressa.passes  # noqa: F401  (fills the registry)

    cls = Pass.registry.get(name.lower())
    if cls is None:
        names = sorted({c.name for c in Pass.registry.values()} | {a for c in Pass.registry.values()
                                                                   for a in c.aliases})
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known passes: {', '.join(names)}"
        raise BadConfig(f"unknown pass {name!r}{hint}")
    return cls


def make_config(cls: type[Pass], options: dict, where: str = "") -> PassConfig:
    """Validate options, naming the key path and the nearest known key in errors."""
    try:
        return cls.Config(**options)
    except ValidationError as err:
        e = err.errors()[0]
        path = ".".join(str(p) for p in e["loc"])
        full = f"{where}.{path}" if where else path
        if e["type"] == "extra_forbidden":
            known = [*cls.Config.model_fields, *olive_names(cls.Config)]
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f", did you mean {close[0]}?" if close else f" (options: {', '.join(cls.Config.model_fields)})"
            raise BadConfig(f"{full}: unknown key{hint}") from None
        raise BadConfig(f"{full}: {e['msg']}") from None


def all_passes() -> list[type[Pass]]:
    import pressa.passes  # noqa: F401

    return sorted({c for c in Pass.registry.values()}, key=lambda c: c.name)


def run_into(cls: type[Pass], cfg: PassConfig, source, out_dir: Path,
             progress: Callable[[int, int, str], None] | None = None,
             log: Callable[[str], None] | None = None, workflow: dict | None = None,
             extra: dict | None = None) -> tuple[dict, dict | None]:
    """Run a pass from `source` into the existing folder `out_dir` (a temporary one: the caller
    renames it into place); returns (report, manifest). ONNX passes read an .onnx file or artifact
    folder; capture reads a Hugging Face folder, bundled name or Hub id; the model builder writes its
    own manifest. `workflow`: the config the manifest records as the one that rebuilds the output."""
    from pressa.artifact.manifest import write_onnx_manifest
    from pressa.graph.onnx_io import find_model, model_folder

    t0 = time.perf_counter()
    prog, say = progress or (lambda *a: None), log or (lambda m: None)
    if cls.input_kind == "onnx":
        ctx = PassContext(model_folder(source), prog, say, dict(extra or {}), workflow)
        rep = cls().run(find_model(source), cfg, out_dir, ctx)
        return rep, write_onnx_manifest(out_dir, source, cls.name, cfg.model_dump(mode="json"), rep,
                                        time.perf_counter() - t0, workflow=workflow)
    if cls.input_kind == "hf":
        from pressa.sources.resolve import resolve_hf_folder

        folder = resolve_hf_folder(str(source))
        rep = cls().run(folder, cfg, out_dir, PassContext(folder, prog, say, dict(extra or {}), workflow))
        return rep, write_onnx_manifest(out_dir, folder, cls.name, cfg.model_dump(mode="json"), rep,
                                        time.perf_counter() - t0, workflow=workflow,
                                        base={"source": {"location": str(source), "folder": str(folder)}})
    ctx = PassContext(Path(str(source)), prog, say, dict(extra or {}), workflow)
    return cls().run(source, cfg, out_dir, ctx), None


def apply_pass(name: str, source: str | Path, output: Path, options: dict | None = None, overwrite: bool = False,
               progress: Callable[[int, int, str], None] | None = None, log: Callable[[str], None] | None = None
               ) -> dict:
    """One pass into a new artifact folder: a one-step workflow run by the engine (see engine.execute)."""
    from pressa.engine.execute import execute, job

    return execute(job(source, [(name, name, options or {})]), output, overwrite, progress, log)
