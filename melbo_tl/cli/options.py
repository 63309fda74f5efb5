"""Command-line options generated from config fields: one source of defaults and help.

A config field declared with :func:`melbo_tl.config.setting` becomes an option spelled
``--field-name`` (and any ``flag``/``short``/``aliases`` it names), whose default is the field's
default and whose help is the field's help. :func:`config_command` gives a command function
those options plus ``--set KEY=VALUE`` for every other setting, and hands the function the
settings as a dict (only what was given differs from the config's defaults).

>>> @app.command("dct")
... @config_command(DCTConfig)
... def dct_cmd(settings: dict, prompt: PromptsOpt, out: OutOpt) -> None:
...     cfg = DCTConfig(**settings)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Optional

import typer

SET_OPTION = "--set"

# A field's annotation (a string: configs use postponed annotations) → what the option parses.
_OPTION_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "float | str": str,
    "Site": str,
    "Site | None": Optional[str],
    "str | None": Optional[str],
    "int | None": Optional[int],
    "float | None": Optional[float],
    "tuple[str, ...]": list[str],
    "tuple[int, ...] | None": Optional[str],
}


def option_names(f: dataclasses.Field) -> list[str]:
    """Every spelling of the option of field ``f`` (the first is the one help shows first)."""
    meta = f.metadata
    own = "--" + f.name.replace("_", "-")
    flag = meta.get("flag") or own
    if "/" in flag:  # a boolean pair such as --chat/--raw
        return [flag]
    names = [flag, *([own] if own != flag else []), *meta.get("aliases", ())]
    return names + ([meta["short"]] if meta.get("short") else [])


def _help(f: dataclasses.Field) -> str:
    meta = f.metadata
    text = meta.get("help", "")
    if meta.get("shown_default"):
        text += f" [default: {meta['shown_default']}]"
    return text


def _default(f: dataclasses.Field) -> Any:
    if f.default is dataclasses.MISSING:
        return ...  # required
    if isinstance(f.default, tuple):
        return list(f.default)
    return f.default


def cli_fields(cls: type, *, skip: Sequence[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that get an option (declared with ``setting``, not ``cli=False``)."""
    return [
        f
        for f in dataclasses.fields(cls)
        if f.name not in skip and "help" in f.metadata and f.metadata.get("cli", True)
    ]


def config_parameters(
    cls: type, *, skip: Sequence[str] = (), defaults: dict[str, Any] | None = None
) -> list[inspect.Parameter]:
    """One keyword parameter per option of ``cls``, annotated for Typer; ``defaults`` overrides
    the config's default of a few fields for one command (stated in its help)."""
    params = []
    for f in cli_fields(cls, skip=skip):
        kind = _OPTION_TYPES.get(str(f.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line type for annotation {f.type!r}.")
        meta = f.metadata
        option = typer.Option(
            *option_names(f),
            help=_help(f),
            metavar=meta.get("metavar"),
            show_default=not meta.get("shown_default") and f.default is not None,
        )
        default = (defaults or {}).get(f.name, _default(f))
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
            )
        )
    return params


def _set_parameter(cls: type, skip: Sequence[str]) -> inspect.Parameter:
    with_option = {f.name for f in cli_fields(cls, skip=skip)}
    rest = [f.name for f in dataclasses.fields(cls) if f.name not in with_option and f.name not in skip]
    which = f"e.g. {SET_OPTION} {rest[0]}=…" if rest else "every setting has its own option here"
    option = typer.Option(
        SET_OPTION,
        metavar="KEY=VALUE",
        help=f"a setting of {cls.__name__} without an option of its own (repeatable; VALUE as JSON, else text); {which}",
    )
    return inspect.Parameter(
        "set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[list[str]], option]
    )


def parse_set(cls: type, pairs: Sequence[str] | None, *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as settings of ``cls``; a key with an option of its own, one the
    command sets itself (``skip``), or no setting of that name is an error naming what is valid."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    with_option = {f.name for f in cli_fields(cls, skip=skip)}
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{SET_OPTION} {pair!r}: write KEY=VALUE, e.g. {SET_OPTION} seed=3.")
        if key not in fields:
            raise ValueError(f"{SET_OPTION} {pair!r}: {cls.__name__} has no setting {key!r}; valid: {sorted(fields)}.")
        if key in with_option:
            raise ValueError(f"{SET_OPTION} {pair!r}: {key} has its own option, {option_names(fields[key])[0]}.")
        if key in skip:
            raise ValueError(f"{SET_OPTION} {pair!r}: this command sets {key} from its own options.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def config_command(
    cls: type, *, skip: Sequence[str] = (), defaults: dict[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command function the options of ``cls`` (except ``skip``) and ``--set``. The function
    takes ``settings`` (a dict of every generated option's value plus the ``--set`` ones) and its
    own parameters. ``defaults`` changes a few fields' defaults for this command only (the command
    records them as ``command.config_defaults``, which the tests hold against the config)."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)  # the command module's own names
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(name, p.annotation))
            for name, p in inspect.signature(func).parameters.items()
            if name != "settings"
        ]
        generated = config_parameters(cls, skip=skip, defaults=defaults)
        names = [p.name for p in generated]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            settings = {name: kwargs.pop(name) for name in names}
            settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
            settings.update(parse_set(cls, kwargs.pop("set_"), skip=skip))
            return func(settings=settings, **kwargs)

        required = [p for p in own if p.default is inspect.Parameter.empty]
        rest = [p for p in own if p.default is not inspect.Parameter.empty]
        params = [*required, *generated, _set_parameter(cls, skip), *rest]
        del command.__wrapped__  # type: ignore[attr-defined]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.config_class, command.config_defaults = cls, dict(defaults or {})  # type: ignore[attr-defined]
        return command

    return wrap
