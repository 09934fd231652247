"""Temporary work under one pressa-owned root per process (`$TMPDIR/pressa-<pid>`), removed when the
process exits (normally, on an error, or on SIGTERM, which the CLI turns into an exception); roots of
processes that died without cleaning up (kill -9, power loss) are swept at the next start."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "pressa-"
_ROOT: list[Path] = []
_BASE: list[str] = []           # the system's temporary folder, as it was before the CLI pointed tempfile here


def base_dir() -> Path:
    if not _BASE:
        _BASE.append(tempfile.gettempdir())
    return Path(_BASE[0])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def owner_pid(name: str, prefix: str) -> int | None:
    """The pid a temporary name ends with (`<prefix>...-<pid>` or `<prefix><pid>`), if it has one."""
    if not name.startswith(prefix):
        return None
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def sweep(folder: Path, prefix: str) -> int:
    """Remove `folder/<prefix>...-<pid>` entries whose process is gone; returns how many."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        pid = owner_pid(entry.name, prefix)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def sweep_stale() -> int:
    """Remove the temporary roots of pressa processes that are no longer running."""
    return sweep(base_dir(), PREFIX)


def temp_root() -> Path:
    """This process's temporary root, made on first use and removed at exit."""
    if not _ROOT:
        sweep_stale()
        root = base_dir() / f"{PREFIX}{os.getpid()}"
        root.mkdir(mode=0o700, exist_ok=True)
        _ROOT.append(root)
        atexit.register(cleanup)
    return _ROOT[0]


def temp_dir(prefix: str = "work-") -> tempfile.TemporaryDirectory:
    """A temporary folder under this process's root (a context manager yielding its path as str)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=temp_root())


def adopt_all() -> None:
    """Point `tempfile` and $TMPDIR at this process's root, so that the tools pressa drives (ONNX
    Runtime's quantizer and its native session files, torch's exporter) leave nothing behind either."""
    tempfile.tempdir = os.environ["TMPDIR"] = str(temp_root())


def cleanup() -> None:
    if _ROOT and _ROOT[0].name == f"{PREFIX}{os.getpid()}" and _ROOT[0].exists():     # not a forked child's
        shutil.rmtree(_ROOT[0], ignore_errors=True)


def user_cache_dir() -> Path:
    """Where pressa keeps files between runs: $XDG_CACHE_HOME/pressa (~/.cache/pressa by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "pressa"
