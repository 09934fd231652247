"""`pressa run`: workflows (Olive's and NNCF's configs, pressa's own, or an artifact's pressa.json)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pressa import log
from pressa.cli.app import app


@app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Workflow config: Olive's JSON/YAML, NNCF's YAML, or "
                                "pressa's own."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (passes, search space, cache hits); "
                                 "run nothing."),
    model: str | None = typer.Option(None, "--model", "-m", help="Input model (overrides the config's)."),
    runs: int = typer.Option(20, "--runs", min=1, help="Timed runs (or decoded tokens) per latency metric."),
    output: Path | None = typer.Option(None, "--output", "-o", "--output_path", help="Output folder (overrides "
                                       "the config's output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output_dir that this command "
                                   "did not write (one a workflow wrote is replaced on a re-run)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    executor: str | None = typer.Option(None, "--executor", help="Where trials run: local (one after another, "
                                        "here) or ray (Ray tasks, as many at once as the cluster holds; "
                                        "overrides the config's engine.executor)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --executor ray: an existing cluster "
                                           "(ray://head:10001, or auto); without, a local Ray is started for the "
                                           "run and stopped after it."),
):
    """Run a workflow: passes in order, each step cached, settings searched, best model + report written.

    An artifact's pressa.json is a config too: `pressa run --config ARTIFACT/pressa.json -o NEW` rebuilds it."""
    from pressa.engine.config import load_workflow
    from pressa.engine.executors import check_executor
    from pressa.engine.paths import written_by_workflow
    from pressa.engine.search import dry_run as plan_of
    from pressa.engine.search import run_workflow

    check_executor(executor)
    wf = load_workflow(config, model, output)
    wf.executor = {**wf.executor, **({"kind": executor} if executor else {}),
                   **({"address": ray_address} if ray_address else {})}
    overwrite = overwrite or written_by_workflow(wf.output_dir)
    if dry_run:
        plan = plan_of(wf)
        if as_json:
            typer.echo(json.dumps(plan, indent=2, default=str))
            return
        typer.echo(f"model: {plan['model']} ({plan['model_kind']})")
        s = plan["search"]
        typer.echo(f"search: {s['algorithm']}, {s['execution_order']}; space {s['space_size']}, "
                   f"trials {s['trials']}")
        for i, steps in enumerate(plan["plan"]):
            typer.echo(f"candidate {i}: " + " -> ".join(
                f"{st['pass']} ({st['type']}{', cached' if st['cached'] else ''})" for st in steps))
        for n in plan["notes"]:
            typer.echo(f"note: {n}")
        return
    from pressa.engine.paths import check_workflow_paths

    check_workflow_paths(wf, overwrite)
    for n in wf.notes:
        log.info(f"note: {n}")
    summary = run_workflow(wf, log.message, overwrite, runs)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        log.info(f"chosen: trial {summary['chosen']} of {summary['trials']} ({summary['failed']} failed); "
                 f"wrote {summary['output_dir']} with footprints.json and report.md")
