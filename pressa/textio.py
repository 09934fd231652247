"""Text as it enters pressa (command-line arguments, stdin, text files), checked to be UTF-8 where it
enters so that a bad byte becomes a message naming where it came from, not a crash deep inside."""

from __future__ import annotations

import sys
from pathlib import Path

from pressa.errors import BadArgument, SourceNotFound


def check_text(value: str, what: str) -> str:
    """`value` as given (Python carries undecodable bytes of argv/stdin as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadArgument(f"{what} is not valid UTF-8 text (at character {err.start}); pass UTF-8") from None
    return value


def decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadArgument(f"{what} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                          "convert it to UTF-8") from None


def read_stdin(what: str = "standard input") -> str:
    stream = getattr(sys.stdin, "buffer", None)
    return decode(stream.read(), what) if stream is not None else check_text(sys.stdin.read(), what)


def read_text(path: Path, what: str | None = None) -> str:
    """A whole text file, strictly UTF-8 (a leading byte-order mark dropped)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise BadArgument(f"{p}: a folder, not a text file") from None
    except FileNotFoundError:
        raise SourceNotFound(f"{p}: no such file") from None
    except OSError as err:
        raise SourceNotFound(f"{p}: cannot read it ({err.strerror})") from None
    return decode(data, what or str(p)).removeprefix("\ufeff")
