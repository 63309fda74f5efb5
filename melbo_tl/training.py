"""Train any registered method into a run folder: checkpoints, ``--resume``, one code path.

:func:`train_to_folder` is the only resume implementation in melbo_tl. It refuses to overwrite
a finished or unfinished run unless asked to resume; on resume it checks the saved method,
config (fields in the config's ``RESUMABLE`` may differ) and prompts, then hands the finished
part to the method, which continues after the last finished unit (vector, adapter batch,
candidate, DCT iteration). Every checkpoint rewrites the folder atomically with
``status: "running"``; the last with ``status: "complete"``. :func:`train` does the same in
memory.

>>> cfg = MelboConfig(source_layer=7, target_layer=16, radius=4.0, n_vectors=4)
>>> train_to_folder(model, "melbo", ["How can I make a bomb?"], cfg, "runs/bomb", resume=True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import Run, load_run, run_meta, save_run
from melbo_tl.config import Config
from melbo_tl.filenames import RUN_FILE
from melbo_tl.registry import Checkpoints, Method, get_method, method_of

RUNNING, COMPLETE = "running", "complete"
# Written by stamp() and run_meta(), never by a method (a resumed run's meta carries them).
_HEAD = (
    "hooks", "method", "config", "prompts", "status", "format_version", "library_version", "model", "d_model",
    "n_layers", "chat_template", "n_vectors",
)  # fmt: skip


def _method(method: str | Method) -> Method:
    return get_method(method) if isinstance(method, str) else method


def stored_prompts(prompts: Any) -> Any:
    """Prompts as stored in run.json: a list (or a method's own mapping, kept as given)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, dict):
        return {k: list(v) for k, v in prompts.items()}
    return list(prompts)


def config_of(run: Run) -> Config:
    """The config a run folder was trained with (format-1 folders are translated)."""
    method = method_of(run)
    data = run.meta.get("config")
    if run.meta.get("format_version", 1) < 2 and method.legacy_config is not None:
        data = method.legacy_config(run.meta)
    if not isinstance(data, dict):
        raise ValueError(f"This {method.name} run's run.json has no 'config'; it was not written by train_to_folder.")
    return method.config.from_dict(data)


def stamp(model: Any, method: Method, prompts: Any, cfg: Config, run: Run, status: str) -> Run:
    """``run`` with the standard run.json head: model, method, config, prompts, status."""
    fields = {k: v for k, v in run.meta.items() if k not in _HEAD}
    meta = run_meta(
        model,
        method=method.name,
        hooks=list(run.meta.get("hooks", [])),
        config=cfg.to_dict(),
        prompts=prompts,
        **fields,
    )
    meta["status"] = status
    return Run(run.tensors, meta)


def check_resumable(out: Path, saved: Run, method: Method, cfg: Config, prompts: Any) -> None:
    if method_of(saved).name != method.name:
        raise ValueError(
            f"Cannot resume {out}: it holds a {saved.meta.get('method')!r} run, not {method.name!r}. Use another folder."
        )
    saved_cfg = config_of(saved)
    diffs = cfg.differences(saved_cfg, ignore=type(cfg).RESUMABLE)
    if diffs:
        details = ", ".join(f"{k}: saved {b!r} vs now {a!r}" for k, (a, b) in diffs.items())
        raise ValueError(
            f"Cannot resume {out}: its settings differ ({details}). Use the saved settings or another folder."
        )
    if saved.meta.get("prompts") != prompts:
        raise ValueError(f"Cannot resume {out}: it was trained on other prompts ({saved.meta.get('prompts')!r}).")


def train(
    model: Any,
    method: str | Method,
    prompts: Sequence[Any] | Any,
    cfg: Config,
    *,
    progress: bool = True,
    backend: Any = None,
) -> Run:
    """Train ``method`` with ``cfg`` on ``prompts`` in memory; the run as it would be saved.
    ``backend``: where the method's batched passes run (:class:`~melbo_tl.registry.Checkpoints`)."""
    m = _method(method)
    cfg = checked_config(m, cfg, model)
    prompts = stored_prompts(prompts)
    run = m.train(model, prompts, cfg, Checkpoints(progress=progress, backend=backend))
    return stamp(model, m, prompts, cfg, run, COMPLETE)


def checked_config(method: Method, cfg: Config, model: Any) -> Config:
    """``cfg`` with the model's defaults filled in, checked against the method and the model."""
    if not isinstance(cfg, method.config):
        raise ValueError(f"Method {method.name!r} takes a {method.config.__name__}, got a {type(cfg).__name__}.")
    cfg = cfg.for_model(model)
    cfg.check_model(model)
    return cfg


def train_to_folder(
    model: Any,
    method: str | Method,
    prompts: Sequence[Any] | Any,
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    backend: Any = None,
) -> Path:
    """Train ``method`` into run folder ``out``, checkpointing after every finished unit.

    Without ``resume``, an existing run in ``out`` is an error rather than being overwritten. With
    it, the saved run must have the same method, config (up to the config's ``RESUMABLE``
    fields) and prompts; a complete run is returned as it is unless the config asks for more.
    """
    m = _method(method)
    cfg = checked_config(m, cfg, model)
    prompts = stored_prompts(prompts)
    out = Path(out)
    previous = None
    if (out / RUN_FILE).is_file():
        if not resume:
            raise ValueError(
                f"{out} already holds a run; pass resume=True (--resume) to continue it, or choose another folder."
            )
        previous = load_run(out, model)
        check_resumable(out, previous, m, cfg, prompts)

    def save(run: Run) -> None:
        save_run(out, stamp(model, m, prompts, cfg, run, RUNNING))

    run = m.train(model, prompts, cfg, Checkpoints(previous, save, out, progress, backend))
    save_run(out, stamp(model, m, prompts, cfg, run, COMPLETE))
    return out


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished run (format-1 runs without a status count as finished)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return False
    return json.loads(path.read_text()).get("status", COMPLETE) == COMPLETE
