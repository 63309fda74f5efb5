"""Configs: the unit of melbo_tl's API.

Every method's settings are one dataclass deriving from :class:`Config`: validated when built
(``__post_init__`` calls :meth:`Config.validate`), written to ``run.json["config"]`` with
:meth:`to_dict`, and read back with :meth:`from_dict`, so a run folder alone says how to re-run,
resume or ship a run to another process. Settings that depend on the model (layer ranges) are
checked by :meth:`check_model` when training starts.

Fields listed in ``RESUMABLE`` may differ when a run is resumed (e.g. ``n_vectors``: ask for more
vectors than an earlier run trained); any other difference is an error.

Settings renamed over time stay accepted under their old names (``ALIASES``: old name → a
function giving ``(new name, value)``), in the constructor, :meth:`Config.build`,
:meth:`Config.replace` and :meth:`Config.from_dict`, so older code and run folders keep their
meaning. Values with a ``to_json`` method (a :class:`~melbo_tl.steering.sites.Site`) are stored
as what it returns.

Fields declared with :func:`setting` carry their help text and command-line spelling: the
command line generates its options from them (:mod:`melbo_tl.cli.options`), so a default and
its help are written once, here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")
Alias = Callable[[Any], tuple[str, Any]]


class _Renames(type):
    """Translates a config class's old setting names (``ALIASES``) when it is constructed."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **translate_aliases(cls, kwargs))


def translate_aliases(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with every old name in ``cls.ALIASES`` replaced by its new name and value."""
    aliases: dict[str, Alias] = getattr(cls, "ALIASES", {})
    out = dict(settings)
    for old in [k for k in out if k in aliases]:
        new, value = aliases[old](out.pop(old))
        if new in out and out[new] is not None and value is not None:
            raise ValueError(f"{cls.__name__}: give {new} or its old name {old}, not both.")
        if new not in out or out[new] is None:
            out[new] = value
    return out


class Config(metaclass=_Renames):
    """Base of every method config (a dataclass): validation and dict round trips."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ()
    ALIASES: ClassVar[dict[str, Alias]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value and what would be valid."""

    def for_model(self: C, model: Any) -> C:
        """The config with model-dependent defaults (e.g. layers left as None) filled in."""
        return self

    def check_model(self, model: Any) -> None:
        """Raise ``ValueError`` if the settings do not fit ``model`` (layers, widths)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict as written by :meth:`to_dict` (old names translated); unknown keys are an error."""
        data = translate_aliases(cls, data)
        _check_names(cls, data)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                value = data[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) and _is_tuple(f.type) else value
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        changes = translate_aliases(type(self), changes)
        _check_names(type(self), changes)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def build(cls: type[C], cfg: C | None = None, **settings: Any) -> C:
        """``cfg`` with ``settings`` changed, or a new config from ``settings``: what entry
        functions do with ``f(model, prompts, cfg=None, **settings)``."""
        if cfg is not None and not isinstance(cfg, cls):
            raise ValueError(f"Expected a {cls.__name__}, got a {type(cfg).__name__}.")
        if cfg is None:
            settings = translate_aliases(cls, settings)
            _check_names(cls, settings)
            return cls(**settings)
        return cfg.replace(**settings) if settings else cfg

    def differences(self, other: Config, *, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for fields that differ (values compare as
        objects: two spellings of one site are the same setting)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {
            k: (mine.get(k), theirs.get(k))
            for k in sorted(set(mine) | set(theirs))
            if k not in ignore and getattr(self, k, mine.get(k)) != getattr(other, k, theirs.get(k))
        }


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    metavar: str | None = None,
    flag: str | None = None,
    short: str | None = None,
    aliases: tuple[str, ...] = (),
    shown_default: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field with what its command-line option needs: ``help``; ``metavar``; ``flag``
    (default ``--field-name``; the field's own spelling is always accepted too), a ``short`` one
    and other ``aliases``; ``shown_default`` for a default the help should state in words (a None
    filled in for the model); ``cli=False`` for settings only ``--set`` reaches."""
    meta = {
        "help": help, "metavar": metavar, "flag": flag, "short": short, "aliases": aliases,
        "shown_default": shown_default, "cli": cli,
    }  # fmt: skip
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _plain(value: Any) -> Any:
    """A setting as JSON stores it: sites as their hook names, tuples and lists element-wise."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _check_names(cls: type, settings: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names - set(getattr(cls, "ALIASES", {})))
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting(s) {unknown}; valid: {sorted(names)}.")


def _is_tuple(annotation: Any) -> bool:
    return "tuple" in str(annotation)


def require(condition: bool, message: str) -> None:
    """``ValueError(message)`` unless ``condition``: a one-line check for ``validate``."""
    if not condition:
        raise ValueError(message)


_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def parse_int_list(spec: str, what: str) -> list[int]:
    """``"0-18"``, ``"2,5,9"``, ``"0-4,8"`` (layers) or ``"-5,-1"`` (positions) → a list of ints."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if m := _RANGE.match(part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"{what} range {part!r} runs backwards; write low-high.")
            out.extend(range(lo, hi + 1))
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(
                    f"{what} {spec!r}: expected integers or ranges like 0-18, separated by commas."
                ) from None
    if not out:
        raise ValueError(f"{what} {spec!r} names nothing.")
    return sorted(set(out), key=out.index)
