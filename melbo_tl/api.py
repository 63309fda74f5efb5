"""The notebook path: entry functions the top-level package exposes (``import melbo_tl as mt``).

Each method also has its own entry function returning its typed result (``mt.melbo``,
``mt.dct``, ``mt.oneshot``, ``mt.adapters``); the two below add what those lack: training any
registered method into a run folder in one call, and the refusal direction from prompt sets.

>>> import melbo_tl as mt
>>> model = mt.load_model()
>>> run = mt.train(model, ["How can I make a bomb?"], "dct", n_factors=64, out="runs/bomb")
>>> with mt.apply(model, run.intervention(0, scale=1.5)):
...     ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import Run, load_run
from melbo_tl.config import Config
from melbo_tl.directions.diff_in_means import diff_in_means
from melbo_tl.directions.method import RefusalDirectionConfig, refusal_prompts
from melbo_tl.directions.scores import Selection
from melbo_tl.directions.selection import select_direction
from melbo_tl.registry import get_method
from melbo_tl.training import train as train_in_memory
from melbo_tl.training import train_to_folder


def train(
    model: Any,
    prompts: Sequence[Any] | Any,
    method: str = "melbo",
    cfg: Config | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    backend: Any = None,
    **settings: Any,
) -> Run:
    """Train ``method`` (any registered name: melbo, dct, oneshot, melbo-adapter, refusal-direction,
    …) on ``prompts``; ``settings`` are fields of its config, applied on top of ``cfg``. With
    ``out``, the run is written (and checkpointed) to that folder (``resume`` continues it);
    either way the run comes back, and steers itself (``run.intervention(i, scale)``). ``backend``:
    where the method's batched passes run (e.g. DCT on Ray workers, ``dct_on_workers``)."""
    m = get_method(method)
    cfg = m.config.build(cfg, **settings)
    if out is None:
        return train_in_memory(model, m, prompts, cfg, progress=progress, backend=backend)
    folder = train_to_folder(model, m, prompts, cfg, out, resume=resume, progress=progress, backend=backend)
    return load_run(folder, model)


def refusal_direction(
    model: Any, cfg: RefusalDirectionConfig | None = None, *, progress: bool = True, **settings: Any
) -> Selection:
    """The refusal direction (Arditi et al.) from the prompt sets the config names: difference in
    means on the training split, selection on the validation split. ``settings`` are
    :class:`RefusalDirectionConfig` fields. ``result.intervention(0)`` adds r (induces refusal),
    ``result.ablation()`` removes r̂ (bypasses it)."""
    cfg = RefusalDirectionConfig.build(cfg, **settings).for_model(model)
    cfg.check_model(model)
    prompts = refusal_prompts(cfg)
    candidates = diff_in_means(
        model, prompts["harmful_train"], prompts["harmless_train"], layers=cfg.layers, positions=cfg.positions,
        chat=cfg.chat, batch_size=cfg.batch_size, progress=progress,
    )  # fmt: skip
    return select_direction(
        model, candidates, prompts["harmful_val"], prompts["harmless_val"], max_layer_frac=cfg.max_layer_frac,
        kl_threshold=cfg.kl_threshold, induce_threshold=cfg.induce_threshold, chat=cfg.chat,
        batch_size=cfg.batch_size, progress=progress,
    )  # fmt: skip
