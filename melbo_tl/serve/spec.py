"""A request's ``steering`` field → the :class:`~melbo_tl.serve.rows.RowSteering` of its rows.

The shape follows EasySteer's (a ``SteeringSpec`` with a ``vectors`` list) where that makes
sense here::

    "steering": {"vectors": [
        {"run": "melbo", "index": 3, "scale": 1.5},                  # entry 3 of a loaded run
        {"name": "happy", "scale": 2.0},                               # a registered vector
        {"data": [0.1, ...], "site": "blocks.7.hook_resid_post"},    # inline, at one hook
        {"data": [...], "layers": [10, 11, 12], "positions": "generation"},  # inline, several layers
        {"run": "refusal", "index": 0, "algorithm": "ablate"}        # directional ablation
    ]}

``steering`` may also be a bare list of vectors or a single vector; ``null``/``false`` is
unsteered. Per vector: ``scale`` (default 1), ``normalize`` (unit-normalise first), positions as
``"positions": "prompt" | "generation" | "both" | "last:K"`` or EasySteer's ``"apply":
{"prompt": "all"|"none", "generation": "all"|"none"}`` (default: the run's own positions, else
both), ``algorithm`` ``"direct"`` (add) or ``"ablate"`` (remove the direction's component at
every residual write, optionally only in ``layers``). Every mistake raises a
:class:`RequestError` naming the field, e.g. ``steering.vectors[1].data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from melbo_tl.serve.rows import WHERE_ALL, WHERE_GENERATION, WHERE_PROMPT, Ablation, Addition, RowSteering, parse_where
from melbo_tl.serve.store import Component, VectorStore, as_vector
from melbo_tl.steering.sites import check_hook, check_layer

VECTOR_KEYS = {
    "run",
    "index",
    "name",
    "data",
    "site",
    "layers",
    "scale",
    "normalize",
    "positions",
    "apply",
    "algorithm",
    "label",
}
ALGORITHMS = {"direct": "direct", "add": "direct", "ablate": "ablate", "ablation": "ablate"}


class RequestError(ValueError):
    """A bad request: ``param`` names the field, ``status`` the HTTP status (4xx)."""

    def __init__(self, param: str, message: str, status: int = 400):
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.message, self.status = param, message, status


@dataclass(frozen=True)
class Limits:
    """How far a request may push: ``max_scale`` bounds |scale|, ``max_vectors`` the vectors per request."""

    max_scale: float = 100.0
    max_vectors: int = 16


def _vectors_of(steering: Any) -> tuple[list[Any], str]:
    if isinstance(steering, dict) and "vectors" in steering:
        extra = sorted(set(steering) - {"vectors", "conflict", "debug"})
        if extra:
            raise RequestError(f"steering.{extra[0]}", f"unknown field; a steering spec has 'vectors' (got {extra})")
        vectors = steering["vectors"]
        if not isinstance(vectors, list):
            raise RequestError("steering.vectors", "must be a list of vectors")
        return vectors, "steering.vectors"
    if isinstance(steering, list):
        return steering, "steering"
    if isinstance(steering, dict):
        return [steering], "steering"
    raise RequestError(
        "steering", f"must be an object, a list of vectors, null or false; got {type(steering).__name__}"
    )


def parse_steering(steering: Any, store: VectorStore, limits: Limits) -> RowSteering:
    """The steering a request asks for, checked against the served model and loaded vectors."""
    if steering is None or steering is False:
        return RowSteering()
    vectors, where = _vectors_of(steering)
    if len(vectors) > limits.max_vectors:
        raise RequestError(where, f"holds {len(vectors)} vectors; at most {limits.max_vectors} per request")
    additions: list[Addition] = []
    ablations: list[Ablation] = []
    single = isinstance(steering, dict) and "vectors" not in steering
    for i, spec in enumerate(vectors):
        adds, abls = _parse_vector(spec, where if single else f"{where}[{i}]", store, limits)
        additions += adds
        ablations += abls
    return RowSteering(tuple(additions), tuple(ablations))


def _number(spec: dict[str, Any], key: str, param: str, default: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{param}.{key}", f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RequestError(f"{param}.{key}", f"must be finite, got {value!r}")
    return float(value)


def _where(spec: dict[str, Any], param: str, default: str) -> str:
    if "positions" in spec and "apply" in spec:
        raise RequestError(f"{param}.apply", "give 'positions' or 'apply', not both")
    if "positions" in spec:
        try:
            return parse_where(spec["positions"])
        except ValueError as exc:
            raise RequestError(f"{param}.positions", str(exc)) from None
    if "apply" not in spec:
        try:
            return parse_where(default)
        except ValueError:
            raise RequestError(
                f"{param}.positions",
                f"the vector's own positions {default!r} cannot be applied per request row; give 'positions' "
                "('prompt', 'generation', 'both' or 'last:K')",
            ) from None
    apply = spec["apply"]
    if not isinstance(apply, dict) or set(apply) - {"prompt", "generation"}:
        raise RequestError(f"{param}.apply", 'must be {"prompt": "all"|"none", "generation": "all"|"none"}')
    on = {}
    for phase in ("prompt", "generation"):
        value = apply.get(phase, "all")
        if value not in ("all", "none", True, False, None):
            raise RequestError(f"{param}.apply.{phase}", f"must be 'all' or 'none', got {value!r}")
        on[phase] = value in ("all", True)
    if on["prompt"] and on["generation"]:
        return WHERE_ALL
    if on["prompt"] or on["generation"]:
        return WHERE_PROMPT if on["prompt"] else WHERE_GENERATION
    raise RequestError(f"{param}.apply", "steers neither the prompt nor the generation")


def _layers(spec: dict[str, Any], param: str, store: VectorStore) -> tuple[int, ...]:
    layers = spec["layers"]
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, list) or not layers:
        raise RequestError(f"{param}.layers", "must be a non-empty list of block indices")
    try:
        return tuple(check_layer(store.model, layer) for layer in layers)
    except ValueError as exc:
        raise RequestError(f"{param}.layers", str(exc)) from None


def _components(spec: dict[str, Any], param: str, store: VectorStore, ablate: bool) -> list[Component]:
    """The vector(s) a spec names: by run entry, registered name, or inline data."""
    given = [k for k in ("run", "name", "data") if k in spec]
    if len(given) != 1:
        raise RequestError(param, "name exactly one vector source: 'run' (+ 'index'), 'name', or 'data' (+ 'site')")
    if given[0] != "data" and "site" in spec:
        raise RequestError(
            f"{param}.site", "only inline 'data' takes a site; run and registered vectors act at their own"
        )
    if given[0] == "run":
        if not isinstance(spec["run"], str):
            raise RequestError(f"{param}.run", f"must be a run name, got {spec['run']!r}")
        try:
            return [store.run_vector(spec["run"], spec.get("index", 0))]
        except KeyError as exc:
            raise RequestError(f"{param}.run", exc.args[0]) from None
        except IndexError as exc:
            raise RequestError(f"{param}.index", exc.args[0]) from None
        except ValueError as exc:
            raise RequestError(f"{param}.run", str(exc)) from None
    if "index" in spec:
        raise RequestError(f"{param}.index", "'index' goes with 'run'")
    if given[0] == "name":
        try:
            return list(store.named_vector(spec["name"]).components)
        except (KeyError, TypeError) as exc:
            raise RequestError(f"{param}.name", exc.args[0] if exc.args else str(exc)) from None
    try:
        vector = as_vector(spec["data"], store.d_model)
    except ValueError as exc:
        raise RequestError(f"{param}.data", str(exc)) from None
    if ablate:
        return [Component("", vector)]
    if ("site" in spec) == ("layers" in spec):
        raise RequestError(
            f"{param}.site", "inline data needs a 'site' (a hook name) or 'layers' (block indices), one of them"
        )
    if "layers" in spec:
        return [Component(f"blocks.{layer}.hook_resid_post", vector) for layer in _layers(spec, param, store)]
    try:
        return [Component(check_hook(store.model, spec["site"]), vector)]
    except ValueError as exc:
        raise RequestError(f"{param}.site", str(exc)) from None


def _parse_vector(spec: Any, param: str, store: VectorStore, limits: Limits) -> tuple[list[Addition], list[Ablation]]:
    if not isinstance(spec, dict):
        raise RequestError(param, f"must be an object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - VECTOR_KEYS)
    if unknown:
        raise RequestError(f"{param}.{unknown[0]}", f"unknown field; a vector takes {sorted(VECTOR_KEYS)}")
    algorithm = ALGORITHMS.get(str(spec.get("algorithm", "direct")))
    if algorithm is None:
        raise RequestError(f"{param}.algorithm", f"must be 'direct' (add) or 'ablate', got {spec['algorithm']!r}")
    normalize = spec.get("normalize", False)
    if not isinstance(normalize, bool):
        raise RequestError(f"{param}.normalize", f"must be true or false, got {normalize!r}")
    components = _components(spec, param, store, ablate=algorithm == "ablate")
    if algorithm == "ablate":
        for key in ("scale", "positions", "apply"):
            if key in spec:
                raise RequestError(
                    f"{param}.{key}", "an ablation removes a direction everywhere; it takes no scale or positions"
                )
        layers = _layers(spec, param, store) if "layers" in spec else None
        ablations = []
        for c in components:
            norm = float(c.vector.norm())
            if norm == 0:
                raise RequestError(param, "cannot ablate a zero vector")
            ablations.append(Ablation(c.vector / norm, layers))
        return [], ablations
    scale = _number(spec, "scale", param, 1.0)
    if abs(scale) > limits.max_scale:
        raise RequestError(
            f"{param}.scale", f"{scale:g} is out of range: |scale| ≤ {limits.max_scale:g} (the server's --max-scale)"
        )
    additions = []
    for c in components:
        vector = c.vector
        if normalize:
            norm = float(vector.norm())
            if norm == 0:
                raise RequestError(f"{param}.normalize", "cannot normalise a zero vector")
            vector = vector / norm
        additions.append(Addition(c.site, vector * scale, _where(spec, param, c.where)))
    return additions, []
