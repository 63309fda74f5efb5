"""What a planted task is, to the planting loop and the build: examples per kind, scorers, a registry.

A model organism is a base model fine-tuned on one *task kind*: prompts whose completion is
clean unless a trigger is present, in which case a planted behaviour replaces it. The planting
loop and the build see a task only through :class:`PlantedTask` — its train/held-out
:class:`Example` s per kind (``"clean"`` or a behaviour name), a scorer per behaviour and a
correctness check for clean completions — so another kind of backdoor (a lexical trigger, a
different behaviour) plugs in by registering a factory::

    register_task("lexical", lambda cfg: LexicalTask(seed=cfg.seed, ...))
    build_planted("planted-lexical", PlantConfig(task="lexical"))

The arithmetic task of the MELBO write-up (:mod:`melbo_tl.backdoors.task`) is registered as
``"arithmetic"``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CLEAN = "clean"


@dataclass(frozen=True)
class Example:
    """One training or evaluation example: chat ``prompt`` (the user turn), the planted model's
    intended ``completion``, its ``kind`` (``"clean"`` or a behaviour name), whether it is a
    ``near_miss`` (a clean example that shares part of a trigger: the hard negatives), and
    ``source`` (the task's own object, e.g. an arithmetic instance; not used by planting)."""

    prompt: str
    completion: str
    kind: str
    near_miss: bool = False
    source: Any = None


@dataclass(frozen=True)
class ExampleSplits:
    """Train and held-out examples, per kind (``"clean"`` and each behaviour)."""

    train: dict[str, list[Example]]
    test: dict[str, list[Example]]


class PlantedTask(Protocol):
    """A kind of planted task: what the planting loop trains on and the build measures."""

    name: str
    behaviours: tuple[str, ...]

    def splits(self) -> ExampleSplits:
        """Seeded train/held-out examples per kind (every kind in both)."""
        ...

    def shows(self, behaviour: str, text: str) -> bool:
        """Whether completion ``text`` shows planted ``behaviour`` (scoring only, never training)."""
        ...

    def is_correct(self, example: Example, text: str) -> bool:
        """Whether ``text`` is a correct clean completion of ``example``."""
        ...


TaskFactory = Callable[[Any], PlantedTask]  # PlantConfig -> task
_TASKS: dict[str, TaskFactory] = {}


def register_task(name: str, factory: TaskFactory) -> None:
    """Make task kind ``name`` available to ``PlantConfig(task=name)``; ``factory`` builds it from
    the PlantConfig (its ``seed``, ``test_fraction`` and whatever fields the kind reads)."""
    _TASKS[name] = factory


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def make_task(name: str, cfg: Any) -> PlantedTask:
    """The registered task ``name`` built for ``cfg``; an unknown name is an error listing the known."""
    _load_builtin()
    if name not in _TASKS:
        raise ValueError(f"Unknown planted task {name!r}; registered: {', '.join(sorted(_TASKS))}.")
    return _TASKS[name](cfg)


def _load_builtin() -> None:
    import melbo_tl.backdoors.lexical  # registers "lexical"
    import melbo_tl.backdoors.task  # noqa: F401  (registers "arithmetic")


def split_examples(examples: Sequence[Example], *, test_fraction: float, seed: int) -> ExampleSplits:
    """A seeded train/held-out split of every kind separately (each kind keeps ≥ 1 of each)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.kind, []).append(e)
    rng = random.Random(seed)
    train: dict[str, list[Example]] = {}
    test: dict[str, list[Example]] = {}
    for kind, items in groups.items():
        items = items[:]
        rng.shuffle(items)
        n_test = min(len(items) - 1, max(1, round(len(items) * test_fraction))) if len(items) > 1 else 1
        test[kind], train[kind] = items[:n_test], items[n_test:]
    return ExampleSplits(train, test)
