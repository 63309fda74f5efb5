"""Run folders: ``vectors.safetensors`` + ``run.json`` (+ ``generations.jsonl``, figures).

Every file is written atomically (temp file in the same folder, then ``os.replace``), so an
interrupted run leaves either the previous complete file or the new one, never a torn one;
that is what lets ``--resume`` trust whatever it finds. Tensors live in safetensors; everything
a reader needs to interpret them (model identity, hook name per vector, positions, method and
hyper-parameters, prompts, chat template, per-vector metrics) lives in ``run.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

import melbo_tl
from melbo_tl.filenames import RUN_FILE, VECTORS_FILE
from melbo_tl.models.loading import model_info
from melbo_tl.steering.interventions import Intervention
from melbo_tl.steering.results import VectorResult
from melbo_tl.steering.sites import Site, check_hook

FORMAT_VERSION = 2  # 2: every method stores its settings as run.json["config"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(path, data)


@dataclass
class Run(VectorResult):
    """A run folder in memory; like every result, it steers itself (``run.intervention(i, scale)``,
    what the run's method makes of entry i: an added vector, an adapter).

    Fields: ``tensors`` (``vectors`` [n, d_model] plus any extras, e.g. adapter factors),
    ``meta`` (the content of run.json: format/library version, model, method, hook per vector,
    positions, hyper-parameters, prompts, chat template, per-vector metrics).
    """

    tensors: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def vectors(self) -> Tensor:  # type: ignore[override]
        return self.tensors["vectors"]

    @property
    def hooks(self) -> list[str]:
        return list(self.meta.get("hooks", []))

    @property
    def sites(self) -> list[Site]:
        """The site of every vector."""
        return [Site.parse(h) for h in self.hooks]

    @property
    def hook(self) -> str:  # type: ignore[override]
        """The hook all vectors act at (a ValueError if they act at several: see :attr:`sites`)."""
        hooks = set(self.hooks)
        if len(hooks) != 1:
            raise ValueError(f"This run's vectors act at {len(hooks)} sites {sorted(hooks)}; read run.sites instead.")
        return hooks.pop()

    @property
    def unit(self) -> str:  # type: ignore[override]
        return "adapter" if "A" in self.tensors else "vector"

    def intervention(self, index: int = 0, scale: float = 1.0) -> Intervention:
        """Entry ``index`` as its method makes it (:func:`melbo_tl.runs.intervention_from_run`)."""
        from melbo_tl.runs import intervention_from_run

        return intervention_from_run(self, index, scale=scale)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.meta.get("method", "?"),
            "model": (self.meta.get("model") or {}).get("spec", "?"),
            "status": self.meta.get("status", "complete"),
        }

    def vector(self, index: int) -> Tensor:
        n = int(self.vectors.shape[0])
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"Vector index {index!r} is out of range: this run has {n} vectors (valid 0…{n - 1}).")
        return self.vectors[index]


def run_meta(model: Any, *, method: str, hooks: list[str], **fields: Any) -> dict[str, Any]:
    """The standard head of run.json for ``model``; ``fields`` add method-specific entries."""
    info = model_info(model)
    tok = getattr(model, "chat_tokenizer", None)
    return {
        "format_version": FORMAT_VERSION,
        "library_version": melbo_tl.__version__,
        "method": method,
        "model": info.to_dict(),
        "d_model": info.d_model,
        "n_layers": info.n_layers,
        "hooks": hooks,
        "chat_template": getattr(tok, "chat_template", None),
        **fields,
    }


def save_run(directory: str | Path, run: Run) -> Path:
    """Write tensors then run.json (the json last: a folder with run.json is complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if "vectors" not in run.tensors:
        raise ValueError("A run needs a 'vectors' tensor of shape [n, d_model].")
    n = int(run.tensors["vectors"].shape[0])
    if len(run.hooks) != n:
        raise ValueError(f"run.json lists {len(run.hooks)} hook names for {n} vectors.")
    save_tensors(directory / VECTORS_FILE, run.tensors)
    atomic_write_json(directory / RUN_FILE, {**run.meta, "n_vectors": n})
    return directory


def load_run(directory: str | Path, model: Any | None = None) -> Run:
    """Read a run folder; with ``model``, check it fits (same width, same model id)."""
    directory = Path(directory)
    meta_path, vec_path = directory / RUN_FILE, directory / VECTORS_FILE
    if not meta_path.is_file() or not vec_path.is_file():
        raise FileNotFoundError(f"{directory} is not a run folder: it needs {RUN_FILE} and {VECTORS_FILE}.")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format version {meta['format_version']}; this melbo_tl reads ≤ {FORMAT_VERSION}."
        )
    run = Run(safetensors.torch.load_file(str(vec_path)), meta)
    if "vectors" not in run.tensors:
        raise ValueError(f"{vec_path} has no 'vectors' tensor.")
    n = int(run.vectors.shape[0])
    if len(run.hooks) != n:
        raise ValueError(f"{meta_path} lists {len(run.hooks)} hook names for {n} vectors.")
    if model is not None:
        check_fits(run, model)
    return run


def check_fits(run: Run, model: Any) -> None:
    info = model_info(model)
    width = int(run.vectors.shape[-1])
    if width != info.d_model:
        raise ValueError(
            f"Run vectors have width {width} but the model {info.spec!r} has d_model = {info.d_model}; "
            f"load the run with the model it was trained on ({run.meta.get('model', {}).get('spec')!r})."
        )
    saved = run.meta.get("model", {})
    if saved.get("revision") not in (None, "unknown", info.revision) or saved.get("architecture") not in (
        None,
        info.architecture,
    ):
        raise ValueError(
            f"Run was made with model {saved.get('spec')!r} (revision {saved.get('revision')}), but the loaded model "
            f"is {info.spec!r} (revision {info.revision}). Vectors only mean something in the model they were fitted to."
        )
    for hook in run.hooks:
        check_hook(model, hook)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
