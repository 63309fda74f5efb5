"""The settings of a trigger recovery (no torch: ``melbo recover-trigger`` generates its options
from them and checks them before loading the model; :mod:`melbo_tl.triggers.recovery` runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from melbo_tl.config import Config, require, setting

GCG, PROJECTION, RANDOM = "gcg", "projection", "random"
VARIANTS = (GCG, PROJECTION, RANDOM)
EMBEDDERS = ("auto", "minilm", "model")
WEIGHTINGS = ("surprise", "uniform")


@dataclass
class RecoveryConfig(Config):
    """Settings of a trigger recovery; every field's help is the command line's. The search
    variants: ``gcg`` (first-order shortlist of the steered completion's log-likelihood, exact
    log-likelihood), ``projection`` (shortlist and rank by how far an edit moves the site's
    activation along the vector), ``random`` (random edits, exact log-likelihood: the baseline)."""

    variant: str = setting(GCG, "search: gcg | projection | random (the baseline)", metavar="V")
    budget: int = setting(512, "exact evaluations of edited prompts, all rounds together (the cost knob)", metavar="N")
    rounds: int = setting(2, "edits per trigger at most (round r combines r single-token edits)", metavar="R")
    beam: int = setting(4, "edited prompts carried into the next round", metavar="B")
    top_k: int = setting(32, "tokens per position the first-order score shortlists", metavar="K")
    plausible: int = setting(
        256,
        "half the shortlist from the model's own top-N next tokens at each place (0: whole vocabulary only)",
        metavar="N",
    )
    weighting: str = setting(
        "surprise", "target tokens weighted by their surprise after the clean prompt, or uniform", metavar="W"
    )
    target_tokens: int = setting(24, "tokens of the steered completion that stand for the behaviour", metavar="N")
    n_verify: int = setting(16, "best candidates checked by unsteered greedy generation", metavar="N")
    min_similarity: float = setting(
        0.7, "verified: embedding cosine of its completion with the steered one at least this", metavar="S"
    )
    min_margin: float = setting(0.15, "verified: and beats the clean prompt's own completion by this much", metavar="M")
    scale: float = setting(1.0, "scale of the vector when generating the behaviour", metavar="X")
    embedder: str = setting("auto", "sentence embeddings of the judge: auto | minilm | model", metavar="E")
    batch_size: int = setting(16, "edited prompts per forward pass", metavar="B")
    seed: int = setting(0, "seed of the random variant", metavar="SEED")
    placeholder: str = setting("!", "one-token text held at a gap to take insertion gradients", cli=False)

    RESUMABLE: ClassVar[tuple[str, ...]] = ("batch_size",)

    def validate(self) -> None:
        require(self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}.")
        require(self.budget >= 1, f"budget must be ≥ 1 exact evaluation, got {self.budget}.")
        require(self.rounds >= 1, f"rounds must be ≥ 1, got {self.rounds}.")
        require(self.beam >= 1, f"beam must be ≥ 1, got {self.beam}.")
        require(self.top_k >= 1, f"top_k must be ≥ 1, got {self.top_k}.")
        require(self.plausible >= 0, f"plausible must be ≥ 0 (0: no prior), got {self.plausible}.")
        require(
            self.weighting in WEIGHTINGS, f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}."
        )
        require(self.target_tokens >= 1, f"target_tokens must be ≥ 1, got {self.target_tokens}.")
        require(self.n_verify >= 0, f"n_verify must be ≥ 0, got {self.n_verify}.")
        require(-1 <= self.min_similarity <= 1, f"min_similarity must be in [-1, 1], got {self.min_similarity}.")
        require(self.scale != 0, "scale must be non-zero (0 steers nothing).")
        require(self.embedder in EMBEDDERS, f"embedder must be one of {', '.join(EMBEDDERS)}, got {self.embedder!r}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        require(bool(self.placeholder), "placeholder must be a non-empty one-token text.")
