"""Source and target sites of the optimizers that read a later layer's response (MELBO,
adapters, DCT): defaults, checks, and the config mixins. No torch: configs and the command line
validate sites without loading it.

The vector is added at a residual ``source`` site and the response is read at a later residual
``target`` site. The reference's defaults are the output of block 7 (its bias on block 7's MLP
output: ``Site(7, "resid_post")``, the residual entering block 8) and the residual entering
block n_layers − 8.
"""

from __future__ import annotations

from typing import Any, ClassVar

from melbo_tl.config import Alias, require
from melbo_tl.positions import Positions
from melbo_tl.steering.sites import Site, SiteLike, n_layers, parse_site


def default_sites(model: Any) -> tuple[Site, Site]:
    """The reference defaults: the output of block 7, and the input of block n_layers − 8."""
    L = n_layers(model)
    if L - 8 <= 8:
        raise ValueError(
            f"This model has {L} blocks: the reference default sites (the output of block 7, the input of block "
            f"n_layers − 8 = {L - 8}) do not fit; give source and target (e.g. source='resid_post.0', target={L - 1})."
        )
    return Site(7, "resid_post"), Site(L - 8, "resid_pre")


def check_objective_sites(model: Any, source: Site, target: Site) -> tuple[int, int]:
    """The blocks (start, stop) between a residual source and a later residual target site, or a
    ValueError naming the valid ones."""
    L = n_layers(model)
    for what, site in (("source", source), ("target", target)):
        if site.canonical().kind != "resid_pre":
            raise ValueError(
                f"{what} {site.hook} is not a residual stream site; give resid_pre.L or resid_post.L "
                f"(the residual entering or leaving block L)."
            )
    start, stop = source.canonical().layer, target.canonical().layer
    if start > L - 1:
        raise ValueError(
            f"source {source.hook} is after the last block of this model's {L} blocks; valid sources are the "
            f"residual entering blocks 0…{L - 1}."
        )
    if stop > L:
        raise ValueError(
            f"target {target.hook} is beyond this model's {L} blocks (0…{L - 1}); valid targets are the residual "
            f"entering blocks {start + 1}…{L - 1} or leaving block {L - 1}."
        )
    if stop <= start:
        raise ValueError(
            f"target {target.hook} must come after source {source.hook}: valid targets are the residual "
            f"entering blocks {start + 1}…{L - 1} (or leaving the last block)."
        )
    return start, stop


def _source_alias(layer: Any) -> tuple[str, Any]:
    """The old ``source_layer=s``: the output of block s."""
    return "source", None if layer is None else Site(int(layer), "resid_post")


def _target_alias(layer: Any) -> tuple[str, Any]:
    """The old ``target_layer=t``: the input of block t."""
    return "target", None if layer is None else Site(int(layer), "resid_pre")


class LayerPair:
    """For configs with a residual ``source`` site (where vectors are added) and a later
    ``target`` site (where the response is read), either left as None for the reference defaults
    (:func:`default_sites`); mixed into the config dataclass, which declares the two fields.
    The old settings ``source_layer=s`` (output of block s) and ``target_layer=t`` (input of block
    t) are accepted as aliases."""

    source: SiteLike | None
    target: SiteLike | None

    ALIASES: ClassVar[dict[str, Alias]] = {"source_layer": _source_alias, "target_layer": _target_alias}

    def validate_sites(self) -> None:
        self.source = parse_site(self.source, what="source")
        self.target = parse_site(self.target, what="target")
        if self.source is not None and self.target is not None:
            s, t = self.source.canonical(), self.target.canonical()
            if s.kind == t.kind == "resid_pre" and t.layer <= s.layer:
                raise ValueError(f"target {self.target.hook} must come after source {self.source.hook}.")

    def for_model(self, model: Any) -> Any:
        """The config with the default sites filled in where left as None."""
        if self.source is not None and self.target is not None:
            return self
        s, t = default_sites(model)
        return self.replace(  # type: ignore[attr-defined]
            source=s if self.source is None else self.source,
            target=t if self.target is None else self.target,
        )

    def check_model(self, model: Any) -> None:
        cfg = self.for_model(model)
        check_objective_sites(model, cfg.source, cfg.target)

    @property
    def site(self) -> Site:
        """Where the vectors act (needs the sites filled in: :meth:`for_model`)."""
        if self.source is None:
            raise ValueError("source is not set; call for_model(model) first.")
        return Site.parse(self.source)

    @property
    def hook(self) -> str:
        return self.site.hook


class LayerPairSettings(LayerPair):
    """A :class:`LayerPair` trained on the MELBO objective: also ``radius``, ``p``, ``q``,
    ``positions``, ``steps``, ``lr`` and ``batch_size``, validated together."""

    radius: float
    p: float
    q: float
    positions: str
    steps: int
    lr: float
    batch_size: int

    def validate_objective(self, *, auto_radius: bool = False) -> None:
        """Check the objective's settings; with ``auto_radius``, ``radius="auto"`` is allowed (calibrated)."""
        self.validate_sites()
        self.positions = str(Positions.parse(self.positions))
        if not (auto_radius and self.radius == "auto"):
            try:
                self.radius = float(self.radius)
            except (TypeError, ValueError):
                raise ValueError(
                    f"radius R must be a number > 0{' or auto' if auto_radius else ''}, got {self.radius!r}."
                ) from None
            require(self.radius > 0, f"radius R must be > 0, got {self.radius}.")
        require(self.p > 0 and self.q > 0, f"p and q must be > 0, got p={self.p}, q={self.q}.")
        require(self.steps >= 0, f"steps must be ≥ 0 (0 = random baseline), got {self.steps}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}.")
