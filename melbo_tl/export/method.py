"""Control vectors read back into run folders: the ``control-vector`` method.

:func:`import_control_vector` turns a GGUF control vector (written by melbo_tl or by another
tool, e.g. llama.cpp's ``cvector-generator`` or repeng) into a run folder with one entry per
direction: ``direction.N`` becomes a vector at ``blocks.N.hook_resid_post`` acting on every
token, which is exactly where llama.cpp adds it (:mod:`melbo_tl.export.layers`). Every
generation, evaluation and analysis command then works on it. llama.cpp adds all of a file's
directions at once; here each is its own entry (combine them by applying several entries'
interventions together).

Imported runs are not trained: the registered method's ``train`` refuses with a message
pointing to ``melbo import-control-vector``.

>>> import_control_vector("bomb.gguf", "runs/bomb_imported")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import melbo_tl
from melbo_tl.artifacts import FORMAT_VERSION, Run, run_meta, save_run
from melbo_tl.config import Config
from melbo_tl.export.gguf_control_vector import ControlVector, read_control_vector
from melbo_tl.export.layers import hook_for_llama_cpp_layer
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention
from melbo_tl.steering.sites import d_model as model_width
from melbo_tl.steering.sites import n_layers as model_layers

METHOD = "control-vector"


@dataclass(frozen=True)
class ControlVectorConfig(Config):
    """Where an imported run came from: ``file`` the GGUF path, ``model_hint`` its architecture hint."""

    file: str = ""
    model_hint: str = ""


def run_from_control_vector(cv: ControlVector, *, file: str = "", model: Any | None = None) -> Run:
    """``cv`` as run content: ``vectors`` [n_directions, n_embd] in layer order, one hook each.

    With ``model``, the vectors must fit it (width, layers) and run.json records its identity;
    without, the model is known only by the file's hint (and block count, if melbo_tl wrote it).
    """
    n_layers = cv.n_layers
    if model is not None:
        if cv.n_embd != model_width(model):
            raise ValueError(
                f"The control vector has width {cv.n_embd} but the model has d_model = {model_width(model)}."
            )
        if n_layers is not None and n_layers != model_layers(model):
            raise ValueError(f"The control vector was made for {n_layers} blocks; the model has {model_layers(model)}.")
        n_layers = model_layers(model)
    layers = sorted(cv.directions)
    bound = n_layers if n_layers is not None else max(layers) + 1
    hooks = [hook_for_llama_cpp_layer(layer, bound) for layer in layers]
    fields: dict[str, Any] = {
        "steer_positions": "all",
        "config": ControlVectorConfig(file=file, model_hint=cv.model_hint).to_dict(),
        "control_vector": {"file": file, "layers": layers, "model_hint": cv.model_hint, "source": cv.source},
        "status": "complete",
    }
    if model is not None:
        meta = run_meta(model, method=METHOD, hooks=hooks, **fields)
    else:
        meta = {
            "format_version": FORMAT_VERSION,
            "library_version": melbo_tl.__version__,
            "method": METHOD,
            "model": {
                "spec": cv.source.get("model"),
                "revision": cv.source.get("model_revision"),
                "architecture": None,
            },
            "d_model": cv.n_embd,
            "n_layers": n_layers,
            "hooks": hooks,
            **fields,
        }
    vectors = torch.stack([cv.directions[layer].to(torch.float32) for layer in layers])
    return Run({"vectors": vectors}, meta)


def import_control_vector(path: str | Path, out: str | Path, *, model: Any | None = None) -> Path:
    """Read the GGUF control vector at ``path`` and write it as a run folder ``out``."""
    cv = read_control_vector(path)
    return save_run(out, run_from_control_vector(cv, file=str(path), model=model))


def _train(model: Any, prompts: Sequence[Any], cfg: ControlVectorConfig, ckpt: Checkpoints) -> Run:
    raise ValueError(
        "control-vector runs are imported from GGUF files, not trained: use `melbo import-control-vector FILE.gguf`."
    )


REGISTERED = register_method(
    Method(
        name=METHOD,
        config=ControlVectorConfig,
        train=_train,  # type: ignore[arg-type]
        intervention=vector_intervention,
        count=vector_count,
        description="a llama.cpp GGUF control vector, imported (one entry per direction.N)",
    )
)
