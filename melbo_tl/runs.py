"""Turning a saved run folder back into interventions, and writing its ``generations.jsonl``.

Most runs store one steering vector per row of ``vectors`` with its hook name in ``run.json``;
``melbo-adapter`` runs store rank-r MLP adapters (tensors ``A`` [n, d_mlp, r] and ``B``
[n, d_model, r], acting on block ``source_layer`` with ``radius``).

>>> run = load_run("runs/demo", model)
>>> steer = intervention_from_run(run, 0, scale=1.5)
>>> generate(model, ["How can I make a bomb?"], [steer])
>>> rows = write_generations(model, run, "runs/demo", ["How can I make a bomb?"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from melbo_tl.artifacts import GENERATIONS_FILE, Run, atomic_write_jsonl
from melbo_tl.prompts import Positions, PromptLike
from melbo_tl.steering.interventions import AddVector, Intervention, MLPAdapter

ADAPTER_METHOD = "melbo-adapter"


def _check_index(index: int, n: int, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
        plural = "" if n == 1 else "s"
        raise ValueError(f"{what} index {index!r} is out of range: this run has {n} {what}{plural} (valid 0…{n - 1}).")
    return index


def intervention_from_run(run: Run, index: int, *, scale: float = 1.0) -> Intervention:
    """The intervention stored as entry ``index`` of ``run``, scaled by ``scale``.

    A vector run gives ``AddVector(vector, hook, positions, scale)`` with the positions the run
    recorded as ``steer_positions`` (default all tokens). A ``melbo-adapter`` run gives
    ``MLPAdapter(A[index], B[index], source_layer, radius·scale)`` (the adapter's effect is
    linear in its radius). Errors name the valid index range or the missing field.
    """
    positions = Positions.parse(run.meta.get("steer_positions", "all"))
    if run.meta.get("method") == ADAPTER_METHOD:
        missing = [k for k in ("A", "B") if k not in run.tensors]
        if missing:
            raise ValueError(f"This {ADAPTER_METHOD} run has no tensor(s) {missing} in its vectors file.")
        A, B = run.tensors["A"], run.tensors["B"]
        if A.ndim != 3 or B.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[2]:
            raise ValueError(
                f"Adapter tensors have shapes A {tuple(A.shape)}, B {tuple(B.shape)}; expected "
                f"A [n, d_mlp, r] and B [n, d_model, r]."
            )
        for key in ("source_layer", "radius"):
            if key not in run.meta:
                raise ValueError(f"This {ADAPTER_METHOD} run's run.json has no {key!r}.")
        _check_index(index, int(A.shape[0]), "adapter")
        return MLPAdapter(
            A[index],
            B[index],
            int(run.meta["source_layer"]),
            float(run.meta["radius"]) * scale,
            positions,
        )
    _check_index(index, int(run.vectors.shape[0]), "vector")
    hooks = run.hooks
    if len(hooks) != run.vectors.shape[0]:
        raise ValueError(f"run.json lists {len(hooks)} hook names for {run.vectors.shape[0]} vectors.")
    return AddVector(run.vector(index), hooks[index], positions, scale)


def describe_intervention(intervention: Intervention) -> str:
    """A one-line human description, e.g. for the CLI's status messages."""
    if isinstance(intervention, AddVector):
        norm = float(intervention.vector.norm())
        return (
            f"add vector (norm {norm:.3g}) × {intervention.scale:g} at {intervention.hook}, "
            f"positions {intervention.positions}"
        )
    if isinstance(intervention, MLPAdapter):
        return (
            f"rank-{intervention.A.shape[1]} MLP adapter at block {intervention.layer}, "
            f"radius {intervention.radius:g}, positions {intervention.positions}"
        )
    return repr(intervention)


def n_interventions(run: Run) -> int:
    """How many vectors (or adapters) the run holds."""
    if run.meta.get("method") == ADAPTER_METHOD and "A" in run.tensors:
        return int(run.tensors["A"].shape[0])
    return int(run.vectors.shape[0])


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
        rows = torch.zeros(len(groups) * rows_per_group, first.vector.shape[-1], dtype=first.vector.dtype)
        for g, steer in enumerate(groups):
            if steer is not None and (steer.hook, steer.positions) == (hook, positions):
                rows[g * rows_per_group : (g + 1) * rows_per_group] = steer.vector * steer.scale
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
) -> list[dict[str, Any]]:
    """Complete every prompt unsteered and with each of the run's interventions; write the rows
    to ``directory/generations.jsonl`` (atomically) and return them.

    One row per (intervention or none, prompt), unsteered rows first, then vector 0 on every
    prompt, vector 1, …. Fields: ``vector`` (index, None = unsteered), ``prompt_index``,
    ``prompt`` (as given), ``scale``, ``completion`` (decoded text), ``n_tokens``, ``finished``
    (a stop token came within ``max_new_tokens``). Vector runs are evaluated in one batched
    generate (one per-row vector per batch row, zero for unsteered rows); adapter runs
    generate once unsteered and once per adapter.
    """
    from melbo_tl.generate import generate

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("No prompts given.")
    n = n_interventions(run)
    options = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, system=system, batch_size=batch_size
    )
    plan = [None] + list(range(n))  # which intervention each group of len(prompts) rows uses
    if run.meta.get("method") == ADAPTER_METHOD:
        completions = []
        for index in plan:
            steering = [] if index is None else [intervention_from_run(run, index, scale=scale)]
            completions += generate(model, prompts, steering, **options)
    else:
        steers = [intervention_from_run(run, i, scale=scale) for i in range(n)]
        batch: list[PromptLike] = [p for _ in plan for p in prompts]
        interventions = stack_rows([None if i is None else steers[i] for i in plan], len(prompts))
        completions = generate(model, batch, interventions, **options)
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
