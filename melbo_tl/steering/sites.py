"""Sites: where in the model a vector acts, as one value with one convention.

A :class:`Site` is a block index and a kind (``Site(7, "resid_post")``). The residual stream
between two blocks has two names, and a site knows it: the output of block s is the input of
block s + 1, so ``Site(7, "resid_post") == Site(8, "resid_pre")`` (they compare and hash equal;
each keeps the spelling it was given, which is the hook it attaches to).

**A bare layer number L means the residual stream entering block L** (``Site(L)`` =
``Site(L, "resid_pre")``, TransformerLens' ``blocks.L.hook_resid_pre``), everywhere in
melbo_tl: in configs, on the command line, in analyses.

:meth:`Site.parse` is the one parser of sites and hook names: it reads a ``Site``, a layer
number, a short spec (``"resid_post.7"``) or a TransformerLens hook name
(``"blocks.7.hook_resid_post"``). Hook strings appear only where TransformerLens needs them
(:attr:`Site.hook`) and in run.json. :func:`check_hook` checks a name against
``model.hook_dict`` with an error that names the valid range, because a typo or an
out-of-range layer would otherwise steer nothing (or raise a bare KeyError deep inside a
forward pass).

>>> Site.parse("blocks.7.hook_resid_post") == Site.parse(8) == Site(8, "resid_pre")
True
>>> Site(7, "resid_post").hook
'blocks.7.hook_resid_post'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

# Kinds with a short name: the hook suffix after ``blocks.L.`` is ``hook_<kind>``. Any other
# block hook (``attn.hook_z``, ``mlp.hook_post``) is a kind spelled as its suffix.
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")
SHORT_KINDS = (*RESID_KINDS, "attn_out", "mlp_out")
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SHORT = re.compile(r"^([a-z_][a-z0-9_.]*)\.(\d+)$")
_KIND_ORDER = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}

SiteLike = Union["Site", int, str]


@dataclass(frozen=True, eq=False)
class Site:
    """Where a vector acts: block ``layer`` and ``kind`` (``resid_pre`` unless given).

    Fields: ``layer`` the block index; ``kind`` ``resid_pre`` | ``resid_mid`` | ``resid_post`` |
    ``attn_out`` | ``mlp_out`` or another block hook's suffix (``mlp.hook_post``). Equality and
    hashing use :meth:`canonical`, so the two names of one residual stream are one site.
    """

    layer: int
    kind: str = "resid_pre"

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"A site's layer must be a block index ≥ 0, got {self.layer!r}.")
        if not isinstance(self.kind, str) or not (self.kind in SHORT_KINDS or "." in self.kind):
            raise ValueError(
                f"Site kind {self.kind!r} is not one of {', '.join(SHORT_KINDS)} (or a block hook such as 'mlp.hook_post')."
            )

    # --- names ----------------------------------------------------------------------------

    @property
    def hook(self) -> str:
        """The TransformerLens hook name, as spelled (``blocks.7.hook_resid_post``)."""
        return f"blocks.{self.layer}.{'hook_' + self.kind if self.kind in SHORT_KINDS else self.kind}"

    def __str__(self) -> str:
        return self.hook

    def __repr__(self) -> str:
        return f"Site({self.layer}, {self.kind!r})"

    def to_json(self) -> str:
        """How run.json and configs store a site: its hook name."""
        return self.hook

    # --- one convention -------------------------------------------------------------------

    def canonical(self) -> Site:
        """The residual after block s as the input of block s + 1; every other site as it is."""
        return Site(self.layer + 1, "resid_pre") if self.kind == "resid_post" else self

    @property
    def is_residual(self) -> bool:
        return self.kind in RESID_KINDS

    def as_resid_post(self) -> Site:
        """The same residual stream named as the output of the block before (``resid_pre`` of
        s ↦ ``resid_post`` of s − 1); raises for the embedding output and non-residual sites."""
        c = self.canonical()
        if c.kind != "resid_pre" or c.layer == 0:
            raise ValueError(f"{self!r} is not the output of a block (the embeddings or a non-residual site).")
        return Site(c.layer - 1, "resid_post")

    def _key(self) -> tuple[int, str]:
        c = self.canonical()
        return (c.layer, c.kind)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Site) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def sort_key(self) -> tuple[int, int, str]:
        """Order sites by depth in the model (canonically equal sites together)."""
        layer, kind = self._key()
        return (layer, _KIND_ORDER.get(kind, 5), kind)

    # --- parsing and checking -------------------------------------------------------------

    @classmethod
    def parse(cls, value: SiteLike, *, what: str = "site") -> Site:
        """A :class:`Site` from a site, a layer number (the residual entering that block), a short
        spec ``"resid_post.7"`` or a hook name ``"blocks.7.hook_resid_post"``."""
        if isinstance(value, Site):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return cls(int(text))
            if m := _BLOCK_HOOK.match(text):
                suffix = m.group(2)
                kind = suffix[5:] if suffix.startswith("hook_") and suffix[5:] in SHORT_KINDS else suffix
                if kind in SHORT_KINDS or "." in kind:
                    return cls(int(m.group(1)), kind)
            if (m := _SHORT.match(text)) and (m.group(1) in SHORT_KINDS or "." in m.group(1)):
                return cls(int(m.group(2)), m.group(1))
        raise ValueError(
            f"{what} {value!r} is not a site: give a layer number L (the residual stream entering block L), "
            f"KIND.L with KIND one of {', '.join(SHORT_KINDS)} (e.g. resid_post.7), or a hook name such as "
            f"blocks.7.hook_resid_post."
        )

    def check(self, model: Any, *, what: str = "site") -> Site:
        """This site if ``model`` has it, else a ValueError naming the valid layers."""
        top = n_layers(model) - 1
        if self.layer > top:
            raise ValueError(
                f"{what} {self.hook} names block {self.layer}, but this model has {n_layers(model)} blocks (valid 0…{top})."
            )
        check_hook(model, self.hook)
        return self


def parse_site(value: SiteLike | None, *, what: str = "site") -> Site | None:
    """:meth:`Site.parse`, passing None through (a setting left to its default)."""
    return None if value is None else Site.parse(value, what=what)


def hook_of(value: SiteLike) -> str:
    """The hook name of a site, short spec or layer number; a string that is no site (a hook outside
    the blocks, or a misspelt one for :func:`check_hook` to explain) is returned as it is."""
    if isinstance(value, str):
        try:
            return Site.parse(value).hook
        except ValueError:
            return value
    return Site.parse(value, what="hook").hook


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
    """The hook name of the residual stream before (``pre``), inside (``mid``) or after (``post``) block ``layer``."""
    if f"resid_{kind}" not in RESID_KINDS:
        raise ValueError(f"Residual kind {kind!r} is not one of ('pre', 'mid', 'post').")
    return Site(layer, f"resid_{kind}").hook


def attn_out_hook(layer: int) -> str:
    """The attention output of block ``layer`` (what it writes into the residual stream)."""
    return Site(layer, "attn_out").hook


def mlp_out_hook(layer: int) -> str:
    """The MLP output of block ``layer`` (what it writes into the residual stream)."""
    return Site(layer, "mlp_out").hook


def mlp_hidden_hook(layer: int) -> str:
    """The MLP hidden activation of block ``layer`` (input of its output projection)."""
    return Site(layer, "mlp.hook_post").hook


def attn_hook(layer: int, name: str) -> str:
    """An attention hook of block ``layer``, e.g. ``attn_hook(3, "hook_z")`` → ``blocks.3.attn.hook_z``."""
    return Site(layer, f"attn.{name}").hook


def hook_layer(name: str) -> int | None:
    """The block index a hook name belongs to, or None for hooks outside the blocks."""
    m = _BLOCK_HOOK.match(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


def check_hook(model: Any, name: str | Site) -> str:
    """Return the hook name if ``model`` has that hook point, else raise a ValueError that says what exists."""
    if isinstance(name, Site):
        name = name.hook
    if not isinstance(name, str) or not name:
        raise ValueError(f"Hook name must be a non-empty string, got {name!r}.")
    if name in model.hook_dict:
        return name
    layer = hook_layer(name)
    if layer is not None and not 0 <= layer < n_layers(model):
        raise ValueError(
            f"Hook {name!r} names block {layer}, but this model has {n_layers(model)} blocks (valid 0…{n_layers(model) - 1})."
        )
    suffix = _BLOCK_HOOK.sub(r"\2", name)
    examples = sorted({_BLOCK_HOOK.sub(r"\2", n) for n in model.hook_dict if n.startswith("blocks.0.")})
    close = [e for e in examples if suffix.split(".")[-1] in e] or examples[:8]
    raise ValueError(
        f"Unknown hook {name!r}. Block hooks look like 'blocks.L.<name>' with <name> one of e.g. {close[:8]}."
    )
