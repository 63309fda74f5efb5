"""The vectors a server can steer with: loaded run folders and named vectors.

A request names a vector as ``{"run": NAME, "index": I}`` (entry I of a loaded run folder) or
``{"name": NAME}`` (a registered vector). A registered vector has one or more components, each a
vector at a hook site: a llama.cpp control vector registers one component per ``direction.N``,
all applied together as llama.cpp does. Everything here is checked against the served model
when it is added (width, hook names, model identity), so a request never meets a vector that
does not fit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.artifacts import Run, load_run
from melbo_tl.filenames import RUN_FILE
from melbo_tl.runs import intervention_from_run, n_interventions
from melbo_tl.steering.interventions import AddVector
from melbo_tl.steering.sites import check_hook, d_model, n_layers

REFUSAL_METHOD = "refusal-direction"


@dataclass(frozen=True)
class Component:
    """One vector at one hook site; ``where`` the positions it acts on unless a request says otherwise
    (a run's own ``steer_positions``; the server applies all, prompt, generation and last:K)."""

    site: str
    vector: Float[Tensor, " d_model"]
    where: str = "all"


@dataclass
class LoadedRun:
    name: str
    path: Path
    run: Run

    @property
    def method(self) -> str:
        return str(self.run.meta.get("method", "?"))

    def describe(self) -> dict[str, Any]:
        meta = self.run.meta
        return {
            "name": self.name,
            "path": str(self.path),
            "method": self.method,
            "n_vectors": n_interventions(self.run),
            "sites": sorted(set(self.run.hooks)),
            "positions": str(meta.get("steer_positions", "all")),
            "raw_norm": meta.get("raw_norm"),
        }


@dataclass
class NamedVector:
    name: str
    components: list[Component]
    source: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "components": [
                {"site": c.site, "norm": float(c.vector.norm()), "positions": c.where} for c in self.components
            ],
            "source": self.source,
        }


def _unique_name(name: str, taken: set[str]) -> str:
    if name in taken:
        raise ValueError(f"The name {name!r} is taken already; choose another (NAME=DIR on the command line).")
    return name


def run_component(loaded: LoadedRun, index: Any) -> Component:
    """Entry ``index`` of a loaded run as a component, with the run's own positions."""
    n = n_interventions(loaded.run)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise IndexError(f"run {loaded.name!r} has {n} vectors: index must be an integer 0…{n - 1}, got {index!r}")
    steer = intervention_from_run(loaded.run, index, scale=1.0)
    if not isinstance(steer, AddVector) or steer.vector.ndim != 1:
        raise ValueError(
            f"run {loaded.name!r} holds {loaded.method} entries, not vectors; the server steers with vectors"
        )
    return Component(steer.hook, steer.vector.detach().float().cpu(), str(steer.positions))


def run_folders(spec: str) -> list[tuple[str, Path]]:
    """``--runs`` entries: ``NAME=DIR`` or ``DIR`` (a run folder, or a folder of run folders)."""
    name, _, where = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(where).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--runs {spec!r}: {path} is not a folder.")
    if (path / RUN_FILE).is_file():
        return [(name or path.name, path)]
    inside = sorted(p for p in path.iterdir() if (p / RUN_FILE).is_file())
    if not inside:
        raise FileNotFoundError(f"--runs {spec!r}: {path} is not a run folder ({RUN_FILE}) and holds none.")
    if name:
        return [(f"{name}/{p.name}", p) for p in inside]
    return [(p.name, p) for p in inside]


class VectorStore:
    """Loaded runs and named vectors for one model (thread-safe: requests read while others add)."""

    def __init__(self, model: Any):
        self.model = model
        self.d_model = d_model(model)
        self.n_layers = n_layers(model)
        self.runs: dict[str, LoadedRun] = {}
        self.named: dict[str, NamedVector] = {}
        self._lock = threading.Lock()

    # -- adding --------------------------------------------------------------------------------
    def add_run(self, path: str | Path, name: str | None = None) -> LoadedRun:
        path = Path(path).expanduser()
        run = load_run(path, self.model)  # checks width, model identity and hook names
        loaded = LoadedRun(name or path.name, path, run)
        with self._lock:
            _unique_name(loaded.name, set(self.runs))
            self.runs[loaded.name] = loaded
        return loaded

    def add_named(self, name: str, components: list[Component], source: dict[str, Any]) -> NamedVector:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}.")
        for c in components:
            check_hook(self.model, c.site)
            if c.vector.shape != (self.d_model,):
                raise ValueError(f"A vector for {c.site} has shape {tuple(c.vector.shape)}; expected [{self.d_model}].")
        entry = NamedVector(name, components, source)
        with self._lock:
            _unique_name(name, set(self.named))
            self.named[name] = entry
        return entry

    def add_from_run(self, name: str, path: str | Path, index: Any) -> NamedVector:
        """Entry ``index`` of the run folder at ``path`` as the named vector ``name``."""
        path = Path(path).expanduser()
        component = run_component(LoadedRun(path.name, path, load_run(path, self.model)), index)
        return self.add_named(name, [component], {"run_dir": str(path), "index": index})

    def add_gguf(self, name: str, path: str | Path) -> NamedVector:
        """A llama.cpp control vector: every ``direction.N`` at ``blocks.N.hook_resid_post``, all positions."""
        from melbo_tl.export.gguf_control_vector import read_control_vector
        from melbo_tl.export.layers import hook_for_llama_cpp_layer

        cv = read_control_vector(path)
        if cv.n_embd != self.d_model:
            raise ValueError(
                f"The control vector {path} has width {cv.n_embd}; the model has d_model = {self.d_model}."
            )
        components = [
            Component(hook_for_llama_cpp_layer(layer, self.n_layers), v.float())
            for layer, v in sorted(cv.directions.items())
        ]
        return self.add_named(name, components, {"gguf": str(path), "model_hint": cv.model_hint})

    # -- reading -------------------------------------------------------------------------------
    def run(self, name: str) -> LoadedRun:
        with self._lock:
            if name in self.runs:
                return self.runs[name]
            known = sorted(self.runs)
        raise KeyError(f"no run {name!r} is loaded; loaded runs: {known or 'none (start with --runs DIR)'}")

    def run_vector(self, name: str, index: Any) -> Component:
        """Entry ``index`` of run ``name`` as a component (KeyError/IndexError/ValueError naming what exists)."""
        return run_component(self.run(name), index)

    def named_vector(self, name: str) -> NamedVector:
        with self._lock:
            if name in self.named:
                return self.named[name]
            known = sorted(self.named)
        raise KeyError(f"no vector is registered as {name!r}; registered: {known or 'none'}")

    def refusal_runs(self) -> list[LoadedRun]:
        with self._lock:
            return [r for r in self.runs.values() if r.method == REFUSAL_METHOD]

    def describe(self) -> dict[str, Any]:
        with self._lock:
            runs, named = list(self.runs.values()), list(self.named.values())
        return {"object": "list", "runs": [r.describe() for r in runs], "data": [v.describe() for v in named]}


def as_vector(values: Any, width: int) -> Tensor:
    """A JSON list of numbers as a float32 [width] tensor (ValueError naming the problem)."""
    if not isinstance(values, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        raise ValueError("must be a list of numbers")
    if len(values) != width:
        raise ValueError(f"has {len(values)} values; this model's vectors have d_model = {width}")
    vector = torch.tensor(values, dtype=torch.float32, device="cpu")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError("holds NaN or infinite values")
    return vector
