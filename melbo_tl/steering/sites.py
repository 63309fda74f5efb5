"""Hook sites: validated TransformerLens hook names.

Every intervention records where it acts as a hook name in TransformerLens' legacy spelling
(``blocks.8.hook_resid_pre``). Names are checked against ``model.hook_dict`` before use, with an
error that names the valid range, because a typo or an out-of-range layer would otherwise
steer nothing (or raise a bare KeyError deep inside a forward pass).
"""

from __future__ import annotations

import re
from typing import Any

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
RESID_KINDS = ("pre", "mid", "post")


def n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


def d_model(model: Any) -> int:
    return int(model.cfg.d_model)


def check_layer(model: Any, layer: int, *, what: str = "layer", allow_end: bool = False) -> int:
    """Raise a ValueError naming the valid range unless ``layer`` is a block index of ``model``."""
    top = n_layers(model) if allow_end else n_layers(model) - 1
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= top:
        raise ValueError(
            f"{what} {layer!r} is out of range: this model has {n_layers(model)} blocks, valid {what}s are 0…{top}."
        )
    return layer


def resid_hook(layer: int, kind: str = "pre") -> str:
    """The legacy name of the residual stream before/between/after block ``layer``."""
    if kind not in RESID_KINDS:
        raise ValueError(f"Residual kind {kind!r} is not one of {RESID_KINDS}.")
    return f"blocks.{layer}.hook_resid_{kind}"


def attn_out_hook(layer: int) -> str:
    """The attention output of block ``layer`` (what it writes into the residual stream)."""
    return f"blocks.{layer}.hook_attn_out"


def mlp_out_hook(layer: int) -> str:
    """The MLP output of block ``layer`` (what it writes into the residual stream)."""
    return f"blocks.{layer}.hook_mlp_out"


def mlp_hidden_hook(layer: int) -> str:
    """The MLP hidden activation of block ``layer`` (input of its output projection)."""
    return f"blocks.{layer}.mlp.hook_post"


def attn_hook(layer: int, name: str) -> str:
    """An attention hook of block ``layer``, e.g. ``attn_hook(3, "hook_z")`` → ``blocks.3.attn.hook_z``."""
    return f"blocks.{layer}.attn.{name}"


def hook_layer(name: str) -> int | None:
    """The block index a hook name belongs to, or None for hooks outside the blocks."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def check_hook(model: Any, name: str) -> str:
    """Return ``name`` if ``model`` has that hook point, else raise a ValueError that says what exists."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"Hook name must be a non-empty string, got {name!r}.")
    if name in model.hook_dict:
        return name
    layer = hook_layer(name)
    if layer is not None and not 0 <= layer < n_layers(model):
        raise ValueError(
            f"Hook {name!r} names block {layer}, but this model has {n_layers(model)} blocks (valid 0…{n_layers(model) - 1})."
        )
    suffix = _BLOCK.sub(r"\2", name)
    examples = sorted({_BLOCK.sub(r"\2", n) for n in model.hook_dict if n.startswith("blocks.0.")})
    close = [e for e in examples if suffix.split(".")[-1] in e] or examples[:8]
    raise ValueError(
        f"Unknown hook {name!r}. Block hooks look like 'blocks.L.<name>' with <name> one of e.g. {close[:8]}."
    )
