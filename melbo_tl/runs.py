"""Turning a saved run folder back into an intervention.

Most runs store one steering vector per row of ``vectors`` with its hook name in ``run.json``;
``melbo-adapter`` runs store rank-r MLP adapters (tensors ``A`` [n, d_mlp, r] and ``B``
[n, d_model, r], acting on block ``source_layer`` with ``radius``).

>>> run = load_run("runs/demo", model)
>>> steer = intervention_from_run(run, 0, scale=1.5)
>>> generate(model, ["How can I make a bomb?"], [steer])
"""

from __future__ import annotations

from melbo_tl.artifacts import Run
from melbo_tl.prompts import Positions
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
