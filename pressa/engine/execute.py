"""CLI jobs as workflows. `auto-opt`, `capture`, `optimize`, `quantize` and `convert-fp16` each compile
to a workflow config of one (or a few) passes with fixed options, parsed and validated exactly as
`pressa run --config` parses it, and executed here: the passes in order, no search, no metrics, into
an artifact folder whose pressa.json records that config, so that
`pressa run --config ARTIFACT/pressa.json -o NEW` rebuilds the same model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pressa.engine.config import parse_workflow
from pressa.passes.base import BadConfig, get_pass, make_config, run_into

Progress = Callable[[int, int, str], None]


def _absolute(value):
    """A path that exists here, made absolute (a recorded workflow must not depend on the current folder)."""
    if isinstance(value, str | Path) and str(value) and Path(str(value)).expanduser().exists():
        return str(Path(str(value)).expanduser().resolve())
    return str(value) if isinstance(value, Path) else value


def job(model, steps: list[tuple[str, str, dict]]) -> dict:
    """The workflow config (pressa's own schema) of a CLI job: `steps` are (key, pass name, options)."""
    from pressa.sources.bundled import DEFAULT_MODEL

    passes = {key: {"type": name, **{k: _absolute(v) if k.endswith("_data") else v for k, v in opts.items()}}
              for key, name, opts in steps}
    return {"input_model": _absolute(model) if model is not None else DEFAULT_MODEL, "passes": passes}


def execute(config: dict, output: Path, overwrite: bool = False, progress: Progress | None = None,
            log: Callable[[str], None] | None = None, extra: dict | None = None) -> dict:
    """Run the job's passes into `output` (written atomically, never over an input); returns the
    manifest. Only the first pass may convert (capture, model builder); later ones take ONNX.
    `extra`: what the first pass takes besides options (an in-memory calibration dataset)."""
    from pressa.artifact import ArtifactKind, atomic_folder, require_kind
    from pressa.engine.paths import workflow_reads
    from pressa.log import quiet_tools

    wf = parse_workflow(config, Path.cwd())
    steps = []
    for spec in wf.passes:
        if spec.space:
            raise BadConfig(f"passes.{spec.key}: a job takes fixed options; search with `pressa run --config`")
        cls = get_pass(spec.type)
        steps.append((cls, make_config(cls, spec.fixed, f"passes.{spec.key}")))
    need = 0
    if steps[0][0].input_kind == "onnx":
        from pressa.graph.onnx_io import find_model

        command = "quantize" if steps[0][0].name.startswith("quantize") else steps[0][0].name
        require_kind(wf.model, ArtifactKind.ONNX, command)          # an auto-opt LLM would be broken
        model = find_model(wf.model)
        need = sum(f.stat().st_size for f in model.parent.glob(f"{model.name}*") if f.is_file()) // 4
    elif steps[0][0].input_kind == "llm":
        from pressa.capture.llm import estimated_size

        need = estimated_size(wf.model, getattr(steps[-1][1], "precision", "fp32"))
    with atomic_folder(Path(output), overwrite, workflow_reads(wf), need_bytes=need) as tmp, quiet_tools():
        return _chain(steps, wf.model, tmp, config, progress, log, extra)


def _chain(steps: list, source, out: Path, config: dict, progress: Progress | None, log, extra) -> dict:
    """Each pass from the previous one's folder; the last writes into `out`, recording `config`."""
    from contextlib import ExitStack

    from pressa.tempdirs import temp_dir

    current = source
    with ExitStack() as stack:
        for i, (cls, cfg) in enumerate(steps):
            last = i == len(steps) - 1
            target = out if last else Path(stack.enter_context(temp_dir(f"{cls.name}-")))
            _, manifest = run_into(cls, cfg, current, target, progress, log, workflow=config if last else None,
                                   extra=extra if i == 0 else None)
            current = target
    from pressa.artifact import read_manifest

    return manifest or read_manifest(out)
