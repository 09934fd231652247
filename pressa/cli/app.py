"""The `pressa` command: the typer app, its global options (--version, --log_level) and what several
families of commands share. Each family adds its commands in its own module (cli/llm.py, cli/onnx.py,
cli/workflow.py, cli/serve.py); cli/__init__.py assembles them."""

from __future__ import annotations

from pathlib import Path

import typer

from pressa import log

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Make trained models small and fast for the hardware they run on, and run them.")

def _show_version(value: bool) -> None:
    if value:
        import pressa

        typer.echo(f"pressa {pressa.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print pressa's version and exit."),
    log_level: int | None = typer.Option(None, "--log_level", "--log-level", min=0, max=4,
                                         help="0 debug (and the traceback of an unexpected error), 1 info, "
                                              "2 warnings, 3 errors, 4 critical."),
):
    if log_level is not None:
        log.set_level(log_level)


THREADS = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: physical cores).")


def runtime_flags(command):
    """The runtime options (pressa.runtime.options.RuntimeOptions: --backend, --device, --hint, --threads,
    --streams, --precision-hint, --cache-dir) as flags; the command receives them as `runtime`, validated."""
    import functools

    from pressa.cli.options import validated, with_config_options
    from pressa.runtime.options import RuntimeOptions

    @functools.wraps(command)
    def checked(*args, runtime: dict, **kw):
        return command(*args, runtime=validated(RuntimeOptions, runtime), **kw)

    return with_config_options(RuntimeOptions, into="runtime")(checked)

OUTPUT = typer.Option(..., "--output", "-o", "--output_path", help="Artifact folder to write (written atomically).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output folder.")
SOURCE = typer.Argument(..., help="An .onnx file or an artifact folder.")



def print_result(result: dict, as_json: bool, title: str) -> None:
    import json

    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, dict):
            continue
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(t)


def done(output: Path, manifest: dict) -> None:
    log.info(f"wrote {output} ({manifest['size_bytes'] / 1e6:.1f} MB)")
