"""The settings of a refusal-direction run (no torch: the command line checks them before
loading anything; :mod:`melbo_tl.directions.method` trains with them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from melbo_tl.config import Config, parse_int_list, require, setting
from melbo_tl.steering.sites import Site, check_layer, n_layers


@dataclass
class RefusalDirectionConfig(Config):
    """Settings of a refusal-direction run; every field's help is the command line's. ``split``
    None means "train" for built-in sets and all of a file; candidate ``layers`` may be given as a
    spec ("0-18", "4,8,12") or sites (``resid_post.7`` is the layer it enters, 8)."""

    harmful: str = setting(
        "harmful", "harmful prompts: built-in set, .txt/.json/.jsonl/.csv file or hf:dataset", metavar="SET|FILE"
    )
    harmless: str = setting("harmless", "harmless prompts (as --harmful)", metavar="SET|FILE")
    split: str | None = setting(
        None, "part of the prompt sets to use: train | test | all", metavar="SPLIT",
        shown_default="train for built-in sets, all for files",
    )  # fmt: skip
    n_train: int = setting(128, "training prompts per set (difference in means)", metavar="N")
    n_val: int = setting(32, "validation prompts per set (selection)", metavar="N")
    layers: tuple[int, ...] | None = setting(
        None, "candidate layers, e.g. 0-18 or 4,8,12 (layer L: the residual entering block L)", metavar="SPEC",
        shown_default="all below --max-layer-frac",
    )  # fmt: skip
    positions: tuple[int, ...] | None = setting(
        None, "candidate positions (negative offsets from the prompt's end), e.g. -5,-1", metavar="SPEC",
        shown_default="the template tokens after the instruction",
    )  # fmt: skip
    seed: int = setting(0, "seed of the train/validation split", metavar="SEED")
    max_layer_frac: float = setting(0.8, "only layers ℓ < frac·n_layers are candidates", metavar="FRAC")
    kl_threshold: float = setting(0.1, "maximum KL on harmless prompts when ablating", metavar="X")
    induce_threshold: float = setting(
        0.0, "adding the vector must raise harmless refusal log-odds above this", metavar="X"
    )
    batch_size: int = setting(16, "prompts per forward pass", metavar="B")
    chat: bool = setting(
        True, "format prompts with the model's chat template (--raw: as they are)", flag="--chat/--raw"
    )

    RESUMABLE = ("kl_threshold", "induce_threshold", "batch_size")

    def validate(self) -> None:
        if isinstance(self.layers, str):
            self.layers = tuple(parse_int_list(self.layers, "layers"))
        if self.layers is not None:
            self.layers = tuple(_candidate_layer(l) for l in self.layers)
        if isinstance(self.positions, str):
            self.positions = tuple(parse_int_list(self.positions, "positions"))
        if self.positions is not None:
            self.positions = tuple(int(p) for p in self.positions)
        require(self.split in (None, "train", "test", "all"), f"split must be train, test or all, got {self.split!r}.")
        require(self.n_train >= 1 and self.n_val >= 1, "n_train and n_val must be at least 1.")
        require(0 < self.max_layer_frac <= 1, f"max_layer_frac must be in (0, 1], got {self.max_layer_frac}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        require(
            not self.positions or all(p < 0 for p in self.positions),
            f"positions {self.positions} must be negative offsets (-1 = last token).",
        )

    def for_model(self, model: Any) -> RefusalDirectionConfig:
        if self.layers is not None:
            return self
        L = n_layers(model)
        return self.replace(layers=tuple(l for l in range(L) if l < self.max_layer_frac * L))

    def check_model(self, model: Any) -> None:
        for layer in self.for_model(model).layers or ():
            check_layer(model, layer)


def _candidate_layer(value: Any) -> int:
    """A candidate layer: the block whose input residual the difference in means is taken at."""
    site = Site.parse(value, what="candidate layer").canonical()
    require(site.kind == "resid_pre", f"candidate layer {value!r} is not a residual stream site.")
    return site.layer
