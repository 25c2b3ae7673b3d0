"""Command-line options generated from a stage's config dataclass.

Each field of the dataclass (its name, type, default and help, from
:func:`stages.config.option`) becomes one option, so a field added to a
config is at once a YAML key, a Python API keyword and a CLI option with
the same help. A command decorated with :func:`config_options` receives the
options it was given as one dict (``None``: not given, so the preset or the
default applies).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Optional

import typer


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; tuples (comma-separated lists on the command line) -> ``str``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is tuple or typing.get_origin(hint) is tuple:
        return str
    return hint


def option_name(field: str, renames: dict[str, str]) -> str:
    return "--" + renames.get(field, field).replace("_", "-")


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    default = f.default
    if "[" in text or default is None or default == ():
        return text
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    if isinstance(default, bool):
        shown = "on" if default else "off"
    return f"{text} [default: {shown}]"


#: the global --seed is every stage's default seed (the dataclass's 0 is only the library's)
SEED_HELP = {"seed": "seed of this stage [default: the global --seed]"}


def config_options(
    cls: type,
    into: str = "settings",
    renames: dict[str, str] | None = None,
    short: dict[str, str] | None = None,
    exclude: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
    sections: Callable[[str], str | None] | None = None,
) -> Callable:
    """Decorate a Typer command with one option per field of ``cls``; the
    command gets them as the dict keyword ``into`` (tuples split on commas).
    ``helps`` replaces a field's help where the command line differs (the seed);
    ``sections`` names the ``--help`` section of a field (None: the general one)."""
    renames, short, helps = renames or {}, short or {}, SEED_HELP | (helps or {})
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]

    def decorate(fn: Callable) -> Callable:
        own_hints = typing.get_type_hints(fn, include_extras=True)
        sig = inspect.signature(fn)
        params = [
            p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != into
        ]
        taken = {p.name for p in params}
        added = []
        for f in fields:
            if f.name in taken:
                raise TypeError(f"{fn.__name__}: option {f.name} is defined twice")
            kind = _base_type(hints[f.name])
            name = option_name(f.name, renames)
            decls = [f"{name}/--no-{name[2:]}"] if kind is bool else [name]
            decls += [short[f.name]] if f.name in short else []
            text = helps.get(f.name) or _help(f)
            section = sections(f.name) if sections is not None else None
            option = typer.Option(*decls, help=text, show_default=False, rich_help_panel=section)
            annotation = Annotated[Optional[kind], option]
            added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
        tuples = {
            f.name
            for f in fields
            if _base_type(hints[f.name]) is str and hints[f.name] is not str and "tuple" in str(hints[f.name])
        }

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            settings = {f.name: kwargs.pop(f.name, None) for f in fields}
            for name in tuples:
                if settings[name] is not None:
                    settings[name] = tuple(v.strip() for v in settings[name].split(",") if v.strip())
            return fn(*args, **{into: settings}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=[*params, *added])
        wrapper.__annotations__ = {p.name: p.annotation for p in [*params, *added]}
        del wrapper.__wrapped__  # Typer must read the new signature, not the undecorated one
        return wrapper

    return decorate
