"""Package namespaces whose names are imported on first use (PEP 562).

``import melbo_tl`` and the command line's ``--help`` and input checks must not pay for torch
and TransformerLens; a package lists where each public name lives and imports the module only
when the name is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str | tuple[str, str]], namespace: dict[str, Any]) -> tuple[
    Callable[[str], Any], Callable[[], list[str]]
]:  # fmt: skip
    """``(__getattr__, __dir__)`` for ``package``: ``where`` maps a public name to its module, or to
    ``(module, attribute)`` when the name differs there; a name read once is kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = (where[name], name) if isinstance(where[name], str) else where[name]  # type: ignore[misc]
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
