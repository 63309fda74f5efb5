"""Turning a saved run folder back into interventions, and writing its ``generations.jsonl``.

What an entry of a run is depends on its method (:mod:`melbo_tl.registry`): most runs store one
steering vector per row of ``vectors`` with its hook name in ``run.json``; adapter runs store
rank-r MLP adapters.

>>> run = load_run("runs/demo", model)
>>> steer = intervention_from_run(run, 0, scale=1.5)
>>> generate(model, ["How can I make a bomb?"], [steer])
>>> rows = write_generations(model, run, "runs/demo", ["How can I make a bomb?"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import Run, atomic_write_jsonl
from melbo_tl.filenames import GENERATIONS_FILE
from melbo_tl.placement import like
from melbo_tl.prompts import Positions, PromptLike
from melbo_tl.registry import method_of
from melbo_tl.steering.interventions import AddVector, Intervention
from melbo_tl.steering.results import check_entry


def check_index(index: int, n: int, what: str) -> int:
    """``index`` if it names one of a run's ``n`` entries (0…n − 1; negative indices are refused),
    else a ValueError naming the valid range."""
    return check_entry(index, n, what, holder="this run")


def vector_count(run: Run) -> int:
    """How many steering vectors a vector run holds."""
    return int(run.vectors.shape[0])


def vector_intervention(run: Run, index: int, scale: float = 1.0) -> AddVector:
    """Entry ``index`` of a vector run: ``AddVector(vector, hook, steer_positions, scale)``."""
    check_index(index, vector_count(run), "vector")
    hooks = run.hooks
    if len(hooks) != run.vectors.shape[0]:
        raise ValueError(f"run.json lists {len(hooks)} hook names for {run.vectors.shape[0]} vectors.")
    positions = Positions.parse(run.meta.get("steer_positions", "all"))
    return AddVector(run.vector(index), hooks[index], positions, scale)


def intervention_from_run(run: Run, index: int, *, scale: float = 1.0) -> Intervention:
    """The intervention stored as entry ``index`` of ``run``, scaled by ``scale``.

    The run's method (from the registry) decides what an entry is: most runs store one steering
    vector per row of ``vectors`` (→ :class:`AddVector` with the run's ``steer_positions``);
    adapter runs store rank-r MLP adapters (→ :class:`MLPAdapter`, radius × scale). Errors name
    the valid index range or the missing field.
    """
    return method_of(run).intervention(run, index, scale)


def n_interventions(run: Run) -> int:
    """How many vectors (or adapters) the run holds."""
    return method_of(run).count(run)


def generate_conditions(
    model: Any, prompts: Sequence[PromptLike], conditions: Sequence[Intervention | None], **options: Any
) -> list[Any]:
    """Completions of every prompt under each condition (None: unsteered), condition-major.

    When every condition is an :class:`AddVector` with one vector (or None) they all run in one
    batched generate (one per-row vector per row, :func:`stack_rows`); otherwise each condition
    gets a generate of its own.
    """
    from melbo_tl.generate import generate

    prompts = list(prompts)
    if all(c is None or (isinstance(c, AddVector) and c.vector.ndim == 1) for c in conditions):
        batch: list[PromptLike] = [p for _ in conditions for p in prompts]
        return generate(model, batch, stack_rows(list(conditions), len(prompts)), **options)  # type: ignore[arg-type]
    out: list[Any] = []
    for condition in conditions:
        out += generate(model, prompts, [] if condition is None else [condition], **options)
    return out


def stack_rows(groups: Sequence[AddVector | None], rows_per_group: int) -> list[AddVector]:
    """Per-row AddVectors that run several conditions in one batched generate.

    Batch rows come in groups of ``rows_per_group``; group g is steered by ``groups[g]`` (None:
    unsteered). One AddVector per distinct (hook, positions), whose rows carry the group's
    vector times its scale, and zeros for groups that act elsewhere or not at all (adding zero
    leaves those rows bit-identical to unsteered).
    """
    steers = [s for s in groups if s is not None]
    out: list[AddVector] = []
    for hook, positions in dict.fromkeys((s.hook, s.positions) for s in steers):
        first = next(s for s in steers if (s.hook, s.positions) == (hook, positions))
        rows = first.vector.new_zeros(len(groups) * rows_per_group, first.vector.shape[-1])
        for g, steer in enumerate(groups):
            if steer is not None and (steer.hook, steer.positions) == (hook, positions):
                rows[g * rows_per_group : (g + 1) * rows_per_group] = like(steer.vector * steer.scale, rows)
        out.append(AddVector(rows, hook, positions, 1.0))
    return out


def write_generations(
    model: Any,
    run: Run,
    directory: str | Path,
    prompts: Sequence[PromptLike],
    *,
    max_new_tokens: int = 64,
    scale: float = 1.0,
    temperature: float = 0.0,
    seed: int = 0,
    system: str | None = None,
    batch_size: int = 16,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Complete every prompt unsteered and with each of the run's interventions (or those in
    ``indices``); write the rows to ``directory/generations.jsonl`` (atomically) and return them.

    One row per (intervention or none, prompt), unsteered rows first, then vector 0 on every
    prompt, vector 1, …. Fields: ``vector`` (index, None = unsteered), ``prompt_index``,
    ``prompt`` (as given), ``scale``, ``completion`` (decoded text), ``n_tokens``, ``finished``
    (a stop token came within ``max_new_tokens``). Vector runs are evaluated in one batched
    generate (one per-row vector per batch row, zero for unsteered rows); adapter runs
    generate once unsteered and once per adapter.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("No prompts given.")
    chosen = list(range(n_interventions(run))) if indices is None else list(indices)
    options = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, system=system, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    plan = [None, *chosen]  # which intervention each group of len(prompts) rows uses
    steers = [intervention_from_run(run, i, scale=scale) for i in chosen]
    completions = generate_conditions(model, prompts, [None, *steers], **options)
    rows_out = [
        {
            "vector": index,
            "prompt_index": j,
            "prompt": prompt,
            "scale": scale,
            "completion": completion.text,
            "n_tokens": len(completion.token_ids),
            "finished": completion.finished,
        }
        for (index, j, prompt), completion in zip(
            ((index, j, prompt) for index in plan for j, prompt in enumerate(prompts)), completions
        )
    ]
    atomic_write_jsonl(Path(directory) / GENERATIONS_FILE, rows_out)
    return rows_out
