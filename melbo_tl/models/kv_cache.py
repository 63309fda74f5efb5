"""A KV cache that melbo_tl owns, and the check that it really fills.

Steered generation decodes one token per step and needs the keys and values of every earlier
token. TransformerLens 4.3's attention bridges read the cache from the keyword
``past_key_values``; transformers 5.24 renamed the keyword its decoder layers pass to ``cache``,
so with that pair the bridge never writes the cache and every step after the first decodes
without context (fluent-looking garbage, no error).

Two measures make generation right with both spellings and loud when it cannot be:

- :func:`cached_decoding` creates the ``DynamicCache`` itself (the caller keeps the reference,
  so whichever object the model hands back does not matter) and, while active, gives each
  block's attention module the cache under both names with a forward pre-hook. Nothing in
  TransformerLens is modified; without the rename the hook changes nothing.
- :func:`check_cache_filled` is run after the first decoding step: the cache must hold exactly
  the prompt's columns. If it does not, :class:`KVCacheError` names the installed versions and
  the range this package was tested with, instead of decoding without context.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import warnings
from collections.abc import Iterator
from typing import Any

_NAMES = ("cache", "past_key_values")


class KVCacheError(RuntimeError):
    """The model did not fill the KV cache: generation would decode without context."""


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def tested_ranges() -> dict[str, str]:
    """The version ranges melbo_tl declares for transformers and TransformerLens (package metadata),
    lower bounds first, e.g. ``{"transformers": ">=5.0, <5.40", …}``."""
    from packaging.requirements import Requirement

    wanted = {"transformers": "", "transformer-lens": ""}
    try:
        requires = md.requires("melbo_tl") or []
    except md.PackageNotFoundError:
        requires = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None and req.name.lower() in wanted:
            specs = sorted(req.specifier, key=lambda s: (not s.operator.startswith(">"), s.version))
            wanted[req.name.lower()] = ", ".join(str(s) for s in specs) or "any"
    return wanted


def versions_note() -> str:
    ranges = tested_ranges()
    return (
        f"installed: transformers {_version('transformers')}, transformer-lens {_version('transformer-lens')}, "
        f"torch {_version('torch')}; melbo_tl is tested with transformers {ranges['transformers'] or '?'} and "
        f"transformer-lens {ranges['transformer-lens'] or '?'} (the exact set is requirements.lock: `make install`)"
    )


def _alias_cache(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: hand the attention module the cache under both keyword spellings."""
    cache = next((kwargs[n] for n in _NAMES if kwargs.get(n) is not None), None)
    if cache is None or all(kwargs.get(n) is cache for n in _NAMES):
        return args, kwargs
    return args, {**kwargs, **{n: cache for n in _NAMES}}


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model`` (the Hugging Face model under the bridge)."""
    from transformers import DynamicCache

    config = getattr(getattr(model, "original_model", None), "config", None)
    return DynamicCache(config=config) if config is not None else DynamicCache()


@contextlib.contextmanager
def cached_decoding(model: Any) -> Iterator[Any]:
    """A fresh cache owned by the caller, readable by every block's attention while active.

    >>> with cached_decoding(model) as cache:
    ...     logits = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    """
    handles = []
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None:
            handles.append(attn.register_forward_pre_hook(_alias_cache, with_kwargs=True))
    try:
        with warnings.catch_warnings():
            # transformers ≥ 5.24 warns on every step that the bridge passes the old keyword.
            warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)
            yield new_cache(model)
    finally:
        for handle in handles:
            handle.remove()


def check_cache_filled(cache: Any, expected: int) -> None:
    """Raise :class:`KVCacheError` unless ``cache`` holds ``expected`` columns (the prompt's width)."""
    seen = int(cache.get_seq_length())
    if seen != expected:
        raise KVCacheError(
            f"The KV cache holds {seen} positions after the first decoding step, but the prompt has "
            f"{expected}: this transformers/TransformerLens combination does not fill the cache, so every "
            f"later token would be generated without context. {versions_note()}. Install the tested set "
            f"(`make install`, or pin transformers to the range above)."
        )
