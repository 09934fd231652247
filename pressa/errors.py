"""User-facing errors: each says what went wrong and what to do. The CLI prints one line, exit 2."""

from __future__ import annotations


def first_line(err: BaseException, limit: int | None = None) -> str:
    """An exception's message for a one-line report: its first line (its type's name when it has no
    message), cut to `limit` characters."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:limit] if limit else line


def validation_message(err, name=None, given: dict | None = None) -> str:
    """A pydantic ValidationError's first problem as one line: a validator's own sentence (it names the
    value) as it is; otherwise "<field> [value]: <message>", the field spelt by `name(path)` (a flag, say;
    default its dotted path) and its value quoted from `given` when it is there."""
    e = err.errors()[0]
    if e["type"] == "value_error":
        return str(e["ctx"]["error"])
    path = ".".join(map(str, e["loc"]))
    label = name(path) if name and path else path
    key = e["loc"][0] if e["loc"] else None
    value = f" {given[key]!r}" if given is not None and key in given else ""
    return f"{label}{value}: {e['msg']}" if label else e["msg"]


class PressaError(Exception):
    """An error the user can fix. `str(err)` is a one-line message."""

    exit_code = 2


class SourceNotFound(PressaError):
    """The model path, file or Hub id does not exist."""


class CorruptModel(PressaError):
    """A weight or graph file cannot be read."""


class UnsupportedArchitecture(PressaError):
    """The model's architecture is not in the table."""


class OutputExists(PressaError):
    """The output folder exists and --overwrite was not given."""


class BadArgument(PressaError):
    """An option value is invalid."""


class OutputOverlapsInput(PressaError):
    """The output folder is, contains or lies inside one of the command's inputs."""


class OutputNotWritable(PressaError):
    """The output cannot be written there (permissions, read-only file system, no space)."""
