"""The beam search over edits of one clean prompt, checkpointed after every chunk of work.

Round 1 scores every single-token substitution and insertion of the clean message to first
order (with ``plausible`` > 0, half the shortlist comes from the tokens the model itself finds
plausible at each place, half from the whole vocabulary), evaluates a shortlist exactly, and keeps the best ``beam`` edited messages; round r
repeats this from those, so after round 2 the candidates include two-token insertions, two
substitutions, or one of each. Every exact evaluation counts against ``budget``, split evenly
over rounds and, within a round, over the messages expanded. The state (every evaluated
candidate, the queue of the round in progress, costs) is a JSON file written atomically after
each chunk, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from melbo_tl.triggers.config import PROJECTION, RANDOM
from melbo_tl.triggers.edits import EditablePrompt, Op, apply_ops
from melbo_tl.triggers.scoring import (
    LOGLIK,
    SHIFT,
    Behaviour,
    exact_scores,
    first_order,
    plausible_tokens,
    random_edits,
    shortlist,
)


@dataclass
class SearchSettings:
    """What the search needs from :class:`~melbo_tl.triggers.recovery.RecoveryConfig`."""

    variant: str
    budget: int
    rounds: int
    beam: int
    top_k: int
    batch_size: int
    seed: int
    placeholder: int
    plausible: int = 0
    chunk: int = 64

    @property
    def key(self) -> str:
        """The exact score candidates are ranked by: projection shift for the projection variant."""
        return "shift" if self.variant == PROJECTION else "loglik"

    @property
    def objective(self) -> str:
        return SHIFT if self.variant == PROJECTION else LOGLIK


@dataclass
class SearchState:
    """Fields: ``records`` (every evaluated candidate: ``content``, ``ops``, ``n_edits``,
    ``round``, ``loglik``, ``projection``, ``shift``), ``rounds_done``, ``queue`` (candidates of
    the round in progress not yet evaluated, as ``[parent content, ops]``), ``cost``."""

    records: list[dict[str, Any]] = field(default_factory=list)
    rounds_done: int = 0
    queue: list[list[Any]] | None = None
    cost: dict[str, float] = field(default_factory=lambda: {"gradient_rows": 0, "exact_rows": 0, "seconds": 0.0})

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "rounds_done": self.rounds_done, "queue": self.queue, "cost": self.cost}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchState:
        return cls(data["records"], int(data["rounds_done"]), data.get("queue"), dict(data["cost"]))


def _parents(state: SearchState, prompt: EditablePrompt, s: SearchSettings, round_: int) -> list[dict[str, Any]]:
    if round_ == 0:
        return [{"content": list(prompt.content), "ops": []}]
    previous = [r for r in state.records if r["round"] == round_ - 1 and r[s.key] is not None]
    return sorted(previous, key=lambda r: -r[s.key])[: s.beam]


def _plan_round(
    model: Any, prompt: EditablePrompt, behaviour: Behaviour, s: SearchSettings, state: SearchState,
    allowed: torch.Tensor, round_: int,
) -> list[list[Any]]:  # fmt: skip
    """The round's candidates as ``[parent content, ops]`` (new messages only, deduplicated)."""
    parents = _parents(state, prompt, s, round_)
    if not parents:
        return []
    seen = {tuple(r["content"]) for r in state.records} | {tuple(prompt.content)}
    per_parent = max(1, s.budget // s.rounds // len(parents))
    generator = torch.Generator().manual_seed(s.seed + round_)
    queue: list[list[Any]] = []
    for parent in parents:
        content = parent["content"]
        slots = None
        if s.plausible:
            slots = plausible_tokens(model, prompt, content, allowed, s.plausible)
            state.cost["exact_rows"] += 1
        if s.variant == RANDOM:
            edits: list[Op] = random_edits(len(content), allowed, budget=per_parent, generator=generator,
                                           per_slot=slots)  # fmt: skip
        else:
            sub, ins = first_order(model, prompt, content, behaviour, objective=s.objective,
                                   placeholder=s.placeholder, allowed=allowed)  # fmt: skip
            state.cost["gradient_rows"] += len(content) + 2
            edits = shortlist(sub, ins, budget=per_parent, top_k=s.top_k)
            if slots is not None:  # half the shortlist from the plausible tokens, half from all
                fluent = shortlist(
                    sub.masked_fill(~slots[: len(content), : sub.shape[1]], float("-inf")),
                    ins.masked_fill(~slots[:, : ins.shape[1]], float("-inf")),
                    budget=per_parent, top_k=s.top_k,
                )  # fmt: skip
                edits = interleave(fluent, edits, per_parent)
        for op in edits:
            new = apply_ops(content, [op])
            if new not in seen:
                seen.add(new)
                queue.append([list(parent["ops"]), list(op)])
    return queue


def interleave(first: list[Op], second: list[Op], n: int) -> list[Op]:
    """Up to ``n`` distinct edits taken alternately from two ranked lists."""
    out: list[Op] = []
    seen: set[Op] = set()
    for pair in zip(first + [None] * len(second), second + [None] * len(first)):
        for op in pair:
            if op is not None and op not in seen and len(out) < n:
                seen.add(op)
                out.append(op)
    return out


def run_search(
    model: Any,
    prompt: EditablePrompt,
    behaviour: Behaviour,
    s: SearchSettings,
    allowed: torch.Tensor,
    *,
    clean_projection: float,
    state: SearchState | None = None,
    checkpoint: Callable[[SearchState], None] | None = None,
    progress: bool = True,
) -> SearchState:
    """Run (or resume) the search; returns the state with every evaluated candidate.
    ``checkpoint(state)`` is called after every chunk of work (to write it atomically)."""
    state = state or SearchState()

    def save() -> None:
        if checkpoint is not None:
            checkpoint(state)

    for round_ in range(state.rounds_done, s.rounds):
        started = time.perf_counter()
        if state.queue is None:
            state.queue = _plan_round(model, prompt, behaviour, s, state, allowed, round_)
            state.cost["seconds"] += time.perf_counter() - started
            save()
        _evaluate_queue(model, prompt, behaviour, s, state, round_, clean_projection, save, progress)
        state.rounds_done, state.queue = round_ + 1, None
        save()
    return state


def _evaluate_queue(
    model: Any, prompt: EditablePrompt, behaviour: Behaviour, s: SearchSettings, state: SearchState, round_: int,
    clean_projection: float, save: Callable[[], None], progress: bool,
) -> None:  # fmt: skip
    assert state.queue is not None
    bar = tqdm(total=len(state.queue), desc=f"round {round_ + 1}/{s.rounds}", disable=not progress)
    while state.queue:
        started = time.perf_counter()
        chunk, rest = state.queue[: s.chunk], state.queue[s.chunk :]
        ops_list = [[*parent_ops, op] for parent_ops, op in chunk]
        contents = [apply_ops(prompt.content, [tuple(o) for o in ops]) for ops in ops_list]
        logliks, projections = exact_scores(model, prompt, contents, behaviour, objective=s.objective,
                                            batch_size=s.batch_size)  # fmt: skip
        for content, ops, ll, proj in zip(contents, ops_list, logliks, projections):
            state.records.append({
                "content": list(content), "ops": ops, "n_edits": len(ops), "round": round_,
                "loglik": None if ll is None else round(ll, 5), "projection": round(proj, 5),
                "shift": round(proj - clean_projection, 5),
            })  # fmt: skip
        state.queue = rest
        state.cost["exact_rows"] += len(chunk)
        state.cost["seconds"] += time.perf_counter() - started
        save()
        bar.update(len(chunk))
    bar.close()
