"""The settings of a task ranking (no torch: ``melbo rank`` generates its options from them and
checks them before loading the model; :mod:`melbo_tl.evaluate.tasks` ranks with them)."""

from __future__ import annotations

from dataclasses import dataclass

from melbo_tl.config import Config, require, setting
from melbo_tl.evaluate.task_items import compile_extract


@dataclass
class TaskConfig(Config):
    """Settings of a task ranking; every field's help is the command line's. ``indices`` the
    vectors to rank (None: all; on the command line, ``--vectors``)."""

    extract: str | None = setting(
        None, "answer = last match (group 1 if any) for rows without their own 'extract'", metavar="REGEX",
        shown_default="the whole completion",
    )  # fmt: skip
    max_new_tokens: int = setting(48, "tokens per greedy completion", metavar="N")
    vectors_per_chunk: int = setting(4, "vectors per batched generate (and checkpoint)", metavar="K")
    batch_size: int = setting(32, "rows per forward pass", metavar="B")
    scale: float = setting(1.0, "multiply every vector by this", metavar="S")
    system: str | None = setting(None, "system prompt", metavar="TEXT")
    chat: bool = setting(
        True, "format prompts with the chat template (--raw: use them as they are)", flag="--chat/--raw"
    )
    indices: list[int] | None = setting(None, "the vectors to rank (None: all)", cli=False)

    def validate(self) -> None:
        require(self.max_new_tokens >= 1, f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}.")
        require(self.vectors_per_chunk >= 1, f"vectors_per_chunk must be ≥ 1, got {self.vectors_per_chunk}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        if self.extract is not None:
            require(bool(self.extract), "extract must be a non-empty regex (or None: the whole completion).")
            compile_extract(self.extract, "--extract")
        if self.indices is not None:
            require(len(self.indices) > 0, "indices is empty; give at least one vector index (or None: all).")
