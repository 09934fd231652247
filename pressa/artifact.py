"""The artifact: a folder written to a temporary sibling and renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pressa.errors import OutputExists

MANIFEST = "pressa.json"
TMP_PREFIX = ".pressa-tmp-"


class Interrupted(BaseException):
    """Raised from SIGTERM/SIGHUP so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    def handler(signum, frame):
        raise Interrupted(signum)

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:        # not the main thread: leave signals alone
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists; pass --overwrite to replace it or choose another --output")
    if path.exists() and not path.is_dir():
        raise OutputExists(f"{path} exists and is not a folder; remove it or choose another --output")


@contextmanager
def atomic_folder(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `path`, on any error or interrupt it is removed."""
    path = Path(path).absolute()
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{TMP_PREFIX}{path.name}-*"):      # left by a SIGKILL
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with signals_as_exceptions():
            yield tmp
            if path.exists():
                old = path.parent / f"{TMP_PREFIX}{path.name}-old-{os.getpid()}"
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_manifest(folder: Path) -> dict:
    p = Path(folder) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
