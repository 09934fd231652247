"""Logging and progress on stderr (stdout stays for results)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True, highlight=False)

# Olive's --log_level: 0 debug, 1 info, 2 warning, 3 error, 4 critical
LEVEL = {"value": 1}


def set_level(level: int) -> None:
    LEVEL["value"] = level


def info(msg: str) -> None:
    if LEVEL["value"] <= 1:
        err.print(msg)


def debug(msg: str) -> None:
    if LEVEL["value"] <= 0:
        err.print(f"[dim]{msg}[/dim]")


def warn(msg: str) -> None:
    if LEVEL["value"] <= 2:
        err.print(f"[yellow]warning:[/yellow] {msg}")


@contextmanager
def progress_bar(title: str) -> Iterator:
    """Yields a callback(done, total, description); silent above log level 2."""
    if LEVEL["value"] > 2:
        yield lambda done, total, desc: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task(title, total=1)

        def update(done: int, total: int, desc: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{title}: {desc}")

        yield update
