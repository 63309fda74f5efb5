"""The settings of a triage (no torch: ``melbo triage`` generates its options from them and
checks them before loading the model; :mod:`melbo_tl.evaluate.triage` runs it)."""

from __future__ import annotations

from dataclasses import dataclass

from melbo_tl.config import Config, require, setting
from melbo_tl.evaluate.degenerate import DEFAULT


@dataclass
class TriageConfig(Config):
    """Settings of a triage; every field's help is the command line's. ``samples`` 1 is greedy;
    the degenerate detector's thresholds are nats/token by which a completion's content may exceed
    the unsteered model's baseline (see docs/triage.md: tuned on the embedded models)."""

    heldout: str | None = setting(
        None, "held-out prompts for generalization: built-in set or file (e.g. harmful)", metavar="SET|FILE",
        flag="--prompts", shown_default="the run's training prompts only",
    )  # fmt: skip
    n_heldout: int = setting(8, "how many held-out prompts", metavar="N", flag="--n-prompts")
    heldout_split: str = setting(
        "test", "the part of the held-out set used: train | test", metavar="SPLIT", flag="--split"
    )
    samples: int = setting(1, "completions per vector and prompt (1: greedy; more: sampled)", metavar="K")
    temperature: float = setting(1.0, "sampling temperature with --samples > 1", metavar="T")
    max_new_tokens: int = setting(48, "tokens per completion", metavar="N")
    threshold: float = setting(0.35, "clustering: cosine-distance cut between behaviours", metavar="D")
    batch_size: int = setting(32, "vectors per batched generate", metavar="B")
    seed: int = setting(0, "seed of the sampled completions", metavar="SEED")
    embedder: str = setting("auto", "sentence embeddings: auto | minilm | model", metavar="E")
    max_content_nll: float = setting(
        DEFAULT.max_content_nll, "degenerate detector: content NLL above the baseline that counts as soup", metavar="X"
    )
    max_loop_nll: float = setting(
        DEFAULT.max_loop_nll, "degenerate detector: loop NLL above the baseline that counts as soup", metavar="X"
    )

    def validate(self) -> None:
        require(self.n_heldout >= 1, f"n_heldout must be ≥ 1, got {self.n_heldout}.")
        require(self.samples >= 1, f"samples must be ≥ 1, got {self.samples}.")
        require(self.samples == 1 or self.temperature > 0, "samples > 1 needs temperature > 0 (greedy repeats itself).")
        require(self.max_new_tokens >= 1, f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}.")
        require(0 < self.threshold < 2, f"threshold is a cosine distance in (0, 2), got {self.threshold}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        for name in ("max_content_nll", "max_loop_nll"):
            require(getattr(self, name) > 0, f"{name} must be > 0 nats/token, got {getattr(self, name)}.")
