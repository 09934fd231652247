"""pressa's command line: one thin command per job, in a module per family of commands. Every command
runs inside one error boundary (pressa.boundary)."""

from __future__ import annotations

import sys

import typer

from pressa.cli import finetune, llm, onnx, serve, workflow  # noqa: F401  (each adds its commands to the app)
from pressa.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    from pressa import tempdirs
    from pressa.boundary import run

    tempdirs.adopt_all()            # every temporary file under one root, removed at exit
    sys.exit(run(typer.main.get_command(app), sys.argv[1:]))
