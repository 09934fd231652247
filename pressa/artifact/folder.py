"""The artifact folder: written to a temporary sibling and renamed into place only when complete, never
over one of its inputs; JSON files read with errors that name them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pressa.errors import OutputExists, OutputNotWritable, OutputOverlapsInput, first_line
from pressa.tempdirs import sweep

TMP_PREFIX = ".pressa-tmp-"


class Interrupted(BaseException):
    """Raised from SIGTERM/SIGHUP so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


_RECEIVED: list[int] = []       # signals turned into Interrupted: kept, since Python swallows an exception
                                # raised while a finalizer (__del__) runs


def raise_if_interrupted() -> None:
    """Raise Interrupted again for a signal whose exception may have been swallowed; called before a
    result is committed (an artifact renamed into place, a cache entry completed, a command's success)."""
    if _RECEIVED:
        raise Interrupted(_RECEIVED[-1])


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    def handler(signum, frame):
        _RECEIVED.append(signum)
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


def local_inputs(*specs) -> list[Path]:
    """The inputs that are paths on this machine (a Hub id or a bundled name is not), resolved."""
    out = []
    for spec in specs:
        if spec is None or str(spec) == "":
            continue
        p = Path(str(spec)).expanduser()
        if p.exists():
            out.append(p.resolve())
    return out


def guard_inputs(path: Path, inputs, option: str = "--output") -> None:
    """No command writes, replaces or deletes a folder that is, contains or lies inside one of its inputs
    (symlinks followed), --overwrite or not."""
    out = Path(path).expanduser().resolve()
    for inp in local_inputs(*inputs):
        if out == inp:
            how = "is"
        elif out in inp.parents:
            how = "contains"
        elif inp in out.parents:
            how = "lies inside"
        else:
            continue
        raise OutputOverlapsInput(f"{option} {path} {how} the input {inp}; pressa never writes over what it "
                                  f"reads (--overwrite or not): choose an {option} elsewhere")


def existing_ancestor(path: Path) -> Path:
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, need_bytes: int = 0, option: str = "--output") -> None:
    """The folder that will receive `path` can be written, with room for about `need_bytes`."""
    where = existing_ancestor(Path(path).expanduser().absolute().parent)
    if not where.is_dir():
        raise OutputNotWritable(f"{option} {path}: {where} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pressa-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputNotWritable(f"{option} {path}: cannot write in {where} ({err.strerror}); choose a writable "
                                f"{option}") from None
    free = shutil.disk_usage(where).free
    if need_bytes and free < need_bytes:
        raise OutputNotWritable(f"{option} {path}: needs about {need_bytes / 1e6:,.0f} MB, {where} has "
                                f"{free / 1e6:,.0f} MB free; free some space or choose another {option}")


def check_output(path: Path, overwrite: bool, inputs=(), option: str = "--output", need_bytes: int = 0) -> None:
    """Before any slow work: the output may be (re)written. Its inputs are never touched; an existing
    folder needs --overwrite; the destination must be writable with room to spare."""
    guard_inputs(path, inputs, option)
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists; pass --overwrite to replace it or choose another {option}")
    if path.exists() and not path.is_dir():
        raise OutputExists(f"{path} exists and is not a folder; remove it or choose another {option}")
    check_writable(path, need_bytes, option)


def plain_modes(folder: Path) -> None:
    """Files as the user's umask makes them (some writers create theirs 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for f in Path(folder).rglob("*"):
        if not f.is_symlink():
            f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_folder(path: Path, overwrite: bool = False, inputs=(), option: str = "--output",
                  need_bytes: int = 0) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `path`, on any error or interrupt it is removed.
    check_output runs first, so nothing is written over an input or without room."""
    path = Path(path).absolute()
    check_output(path, overwrite, inputs, option, need_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent, f"{TMP_PREFIX}{path.name}-")              # left by a SIGKILL
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with signals_as_exceptions():
            yield tmp
            raise_if_interrupted()
            plain_modes(tmp)
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


def read_json(path: Path) -> dict:
    """A JSON file of an artifact or config, with a one-line error naming it when it is damaged."""
    from pressa.errors import CorruptModel

    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CorruptModel(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                           "the file is damaged: rebuild or re-download it") from None
    except ValueError as err:
        raise CorruptModel(f"{path}: not valid JSON ({first_line(err)}); the file is damaged: rebuild or "
                           "re-download it") from None
    except OSError as err:
        raise CorruptModel(f"{path}: cannot read it ({err.strerror})") from None


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def folder_size(folder: Path) -> int:
    """Bytes of every file below `folder`."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
