"""Where a workflow writes: its output_dir (replaced on a re-run when a workflow wrote it, never over
an input, the cache included) and its cache_dir."""

from __future__ import annotations

from pathlib import Path

from pressa.engine.config import Workflow
from pressa.engine.runner import Trial
from pressa.passes.base import BadConfig


def written_by_workflow(folder: Path) -> bool:
    """An output_dir a workflow run wrote (its report beside its manifest): a re-run replaces it."""
    return (Path(folder) / "footprints.json").is_file() and (Path(folder) / "pressa.json").is_file()


def record_workflow(folder: Path, wf: Workflow, best: Trial) -> None:
    """The output's pressa.json records the chosen candidate as a workflow without search: running it
    rebuilds this model."""
    from pressa.artifact import read_manifest, write_json
    from pressa.engine.execute import job

    manifest = read_manifest(folder)
    if manifest:
        steps = [(p.key, p.type, best.options.get(p.key, p.fixed)) for p in wf.passes]
        write_json(folder / "pressa.json", {**manifest, "workflow": job(wf.model, steps)})


def workflow_reads(wf: Workflow) -> list:
    """What a workflow's passes and metrics read, never to be written over: its model and data files."""
    data = [m.data for m in wf.metrics] + [wf.accuracy_data]
    data += [v for p in wf.passes for k, v in p.fixed.items() if k.endswith("_data") and isinstance(v, str)]
    return [wf.model, *data]


def workflow_inputs(wf: Workflow) -> list:
    """What `pressa run` must never write over: what the workflow reads, and its cache."""
    return [*workflow_reads(wf), wf.cache_dir]


def check_workflow_paths(wf: Workflow, overwrite: bool) -> None:
    """Before any pass runs: output_dir may be written and overlaps no input (the cache included), and
    cache_dir can be written."""
    from pressa.artifact import check_output, check_writable, guard_inputs

    out, cache = Path(wf.output_dir).resolve(), Path(wf.cache_dir).resolve()
    if out == cache or out in cache.parents or cache in out.parents:
        raise BadConfig(f"output_dir {wf.output_dir} and cache_dir {wf.cache_dir} overlap; replacing the output "
                        "would delete the cache (or the reverse): give them separate folders")
    check_output(wf.output_dir, overwrite, workflow_inputs(wf), "output_dir")
    guard_inputs(wf.cache_dir, [wf.model], "cache_dir")
    check_writable(Path(wf.cache_dir) / "entry", option="cache_dir")
