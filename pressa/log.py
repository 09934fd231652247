"""Logging and progress on stderr (stdout stays for results)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
def status(message: str) -> Iterator[None]:
    """A spinner for a step without a known length (silent above log level 2)."""
    if LEVEL["value"] > 2:
        yield
        return
    with err.status(message, spinner="dots"):
        yield


@contextmanager
def progress_bar(title: str) -> Iterator:
    """Yields a callback(done, total, description). The bar appears on the first update, and is
    removed if the work fails, so that an error stays a single line."""
    if LEVEL["value"] > 2:
        yield lambda done, total, desc: None
        return
    state: dict = {}

    def update(done: int, total: int, desc: str) -> None:
        if "bar" not in state:
            bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                           TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                           TextColumn("eta"), TimeRemainingColumn(), console=err)
            bar.start()
            state["bar"], state["task"], state["total"] = bar, bar.add_task(title, total=total), total
        if total != state["total"]:                  # the next phase (calibration, then the build): a new ETA
            state["bar"].reset(state["task"], total=total)
            state["total"] = total
        state["bar"].update(state["task"], completed=done, total=total, description=f"{title}: {desc}")

    try:
        yield update
    except BaseException:
        if "bar" in state:
            state["bar"].live.transient = True
        raise
    finally:
        if "bar" in state:
            state["bar"].stop()


def message(msg: str) -> None:
    """A pass's message: 'warning: ...' as a warning, anything else as info."""
    if msg.startswith("warning: "):
        warn(msg[len("warning: "):])
    else:
        info(msg)


@contextmanager
def quiet_tools() -> Iterator[None]:
    """Silence the Python warnings and root-logger chatter of the tools pressa drives (torch's
    exporter, ONNX Runtime's quantizer), which otherwise reach the user as noise."""
    import logging
    import warnings

    root = logging.getLogger()
    old = root.level
    names = ("torch", "torch.onnx", "torch.export", "torch.onnx._internal.exporter._registration", "onnxscript",
             "onnx_ir")
    olds = {n: logging.getLogger(n).level for n in names}
    root.setLevel(logging.ERROR)
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(old)
        for n, lv in olds.items():
            logging.getLogger(n).setLevel(lv)
