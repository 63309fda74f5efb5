"""The methods registry: every way of making steering vectors, by the name run folders record.

A method is one module that registers a :class:`Method`: its config class, a ``train`` function
that writes its result as a :class:`~melbo_tl.artifacts.Run`, and how one entry of such a run
becomes an intervention. Everything generic looks the method up by name instead of comparing
strings: :func:`melbo_tl.training.train_to_folder` (checkpoints and ``--resume`` for every
method), :func:`melbo_tl.runs.intervention_from_run` (generation, evaluation, analysis, chat),
and the CLI.

Built-in methods register themselves when their module is imported; :func:`get_method` imports
the module of a built-in name on first use (as a plugin's entry point would be), so this module
stays at the bottom of the package and never imports the optimizers.

Adding a method: write ``melbo_tl/optimize/<name>.py`` with a :class:`~melbo_tl.config.Config`
dataclass, its entry function and a ``register_method(Method(...))`` call; add its module to
:data:`BUILTIN`; add a CLI command that parses options into the config and calls
``train_to_folder``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import Run
from melbo_tl.config import Config
from melbo_tl.steering.interventions import Intervention

# Built-in method name → the module that registers it.
BUILTIN: dict[str, str] = {
    "melbo": "melbo_tl.optimize.melbo",
    "melbo-random": "melbo_tl.optimize.melbo",
    "melbo-adapter": "melbo_tl.optimize.adapters",
    "oneshot": "melbo_tl.optimize.oneshot",
    "refusal-direction": "melbo_tl.directions.method",
    "dct": "melbo_tl.optimize.dct",
    "control-vector": "melbo_tl.export.method",
}


@dataclass
class Checkpoints:
    """What a method's ``train`` gets to continue and to save finished work.

    Fields: ``previous`` the interrupted run (status "running") to continue, or None;
    ``save(run)`` writes the run so far atomically (a no-op when training in memory);
    ``folder`` the run folder, for method-specific side files (None in memory);
    ``progress`` whether to show progress bars; ``backend`` where the method's batched passes
    run, for methods that can hand them elsewhere (None: this process; DCT takes a wrapper of its
    Δ evaluation, e.g. :func:`melbo_tl.distributed.dct_on_workers`).
    """

    previous: Run | None = None
    save: Callable[[Run], None] = field(default=lambda run: None)
    folder: Path | None = None
    progress: bool = True
    backend: Any = None


TrainFn = Callable[[Any, Sequence[Any], Any, Checkpoints], Run]
InterventionFn = Callable[[Run, int, float], Intervention]


@dataclass(frozen=True)
class Method:
    """One registered method.

    Fields: ``name`` (recorded in run.json); ``config`` its :class:`Config` class; ``train``
    ``(model, prompts, cfg, checkpoints) → Run`` (tensors plus method-specific run.json fields;
    the generic head — model, config, prompts, status — is added by ``train_to_folder``);
    ``intervention`` ``(run, index, scale) → Intervention``; ``count`` ``run → number of
    entries``; ``unit`` what one entry is called ("vector", "adapter"); ``legacy_config`` turns a format-1 run.json into this config's dict;
    ``description`` one line for help texts.
    """

    name: str
    config: type[Config]
    train: TrainFn
    intervention: InterventionFn
    count: Callable[[Run], int]
    description: str = ""
    unit: str = "vector"
    legacy_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_METHODS: dict[str, Method] = {}


def register_method(method: Method, *, aliases: Sequence[str] = ()) -> Method:
    """Make ``method`` known under its name (and ``aliases``, e.g. names older runs recorded)."""
    for name in (method.name, *aliases):
        known = _METHODS.get(name)
        if known is not None and known is not method and known.name != method.name:
            raise ValueError(f"A method named {name!r} is already registered ({known.config.__name__}).")
        _METHODS[name] = method
    return method


def get_method(name: str) -> Method:
    """The method registered as ``name`` (importing a built-in method's module on first use)."""
    if name not in _METHODS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}; known methods: {', '.join(method_names())}.")
    return _METHODS[name]


def method_names() -> list[str]:
    """Every known method name (built-in and registered), sorted."""
    return sorted(set(BUILTIN) | set(_METHODS))


def method_of(run: Run) -> Method:
    """The method that wrote ``run`` (from run.json's ``method``)."""
    name = run.meta.get("method")
    if not isinstance(name, str):
        raise ValueError(f"This run folder's run.json names no method; known methods: {', '.join(method_names())}.")
    return get_method(name)
