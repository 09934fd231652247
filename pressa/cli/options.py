"""Command-line options made from a pass's Config: its fields' defaults, help and choices are the one
declaration; a command adds only its spellings (`--group-size`, Olive's `--block_size`). Values are
validated by the Config itself, and a bad one is reported under the flag the user typed."""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path

import typer
from pydantic import BaseModel, ValidationError

from pressa.errors import BadArgument, validation_message


def _field_type(annotation) -> tuple[type, tuple | None]:
    """(the type typer parses, the choices of a Literal)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), tuple(args)
    if args and typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return _field_type(args[0])
    return annotation, None


def _option(name: str, f, flags: dict, default, note: str = "") -> inspect.Parameter:
    typ, choices = _field_type(f.annotation)
    dashed = name.replace("_", "-")
    spell = flags.get(name) or ((f"--{dashed}/--no-{dashed}",) if typ is bool else (f"--{dashed}",))
    text = (f.description or "").rstrip(".")
    text = text[:1].upper() + text[1:] + (f" ({', '.join(map(str, choices))})" if choices else "") + note + "."
    option = typer.Option(default, *spell, help=text, show_default=default not in (None, []))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=Path | None if name.endswith("_data") else typ | None)


def config_parameters(config: type[BaseModel], flags: dict[str, tuple[str, ...]], skip: tuple[str, ...] = ()
                      ) -> list[inspect.Parameter]:
    """One keyword parameter per field (not in `skip`), a typer option spelt `--field-name` unless
    `flags` spells it otherwise; a bool spelt `--x/--no-x` by default."""
    return [_option(name, f, flags, f.get_default(call_default_factory=True))
            for name, f in config.model_fields.items() if name not in skip]


def union_parameters(configs: dict[str, type[BaseModel]], flags: dict[str, tuple[str, ...]],
                     skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One option per field of any of the Configs (one per mode of a command), unset by default so that
    each mode's own default applies; the help names the modes a field belongs to and their defaults."""
    seen: dict[str, list[str]] = {}
    for mode, config in configs.items():
        for name in config.model_fields:
            if name not in skip:
                seen.setdefault(name, []).append(mode)
    params = []
    for name, modes in seen.items():
        f = configs[modes[0]].model_fields[name]
        defaults = {repr(configs[m].model_fields[name].get_default(call_default_factory=True)) for m in modes}
        shown = f"default {defaults.pop()}" if len(defaults) == 1 and "None" not in defaults else ""
        where = f"{', '.join(modes)} only" if len(modes) < len(configs) else ""
        note = f"; {'; '.join(x for x in (where, shown) if x)}" if where or shown else ""
        params.append(_option(name, f, flags, None, note))
    return params


def with_config_options(config: type[BaseModel] | dict[str, type[BaseModel]],
                        flags: dict[str, tuple[str, ...]] | None = None, skip: tuple[str, ...] = (),
                        into: str = "options"):
    """A command decorator: the Config's fields become options, and the command receives them as
    `options` (or the parameter `into` names: a dict of the values given or defaulted). Given several
    Configs by mode, every field of any becomes an option and the dict holds only the values given."""
    flags = flags or {}

    def decorate(command):
        own = [p for p in inspect.signature(command).parameters.values() if p.name != into]
        extra = (union_parameters(config, flags, skip) if isinstance(config, dict)
                 else config_parameters(config, flags, skip))
        names = [p.name for p in extra]

        @functools.wraps(command)
        def wrapper(**kw):
            options = {n: str(v) if isinstance(v, Path) else v for n, v in ((n, kw.pop(n)) for n in names)}
            if isinstance(config, dict):
                options = {n: v for n, v in options.items() if v is not None and v != []}
            return command(**{into: options}, **kw)

        wrapper.__signature__ = inspect.Signature(own + extra)
        del wrapper.__wrapped__
        return wrapper
    return decorate


def flag_of(field: str, flags: dict[str, tuple[str, ...]] | None = None) -> str:
    return (flags or {}).get(field, (f"--{field.replace('_', '-')}",))[0].split("/")[0]


def validated(config: type[BaseModel], options: dict, flags: dict[str, tuple[str, ...]] | None = None):
    """`options` as the Config; a bad value is one line naming the flag."""
    try:
        return config(**options)
    except ValidationError as err:
        raise BadArgument(validation_message(err, lambda path: flag_of(path.split(".")[0], flags), options)) from None
