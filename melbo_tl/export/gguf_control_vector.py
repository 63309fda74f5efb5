"""The GGUF control-vector file that llama.cpp's ``--control-vector`` reads.

A GGUF file with ``general.architecture = "controlvector"``, the keys
``controlvector.model_hint`` (the model's llama.cpp architecture, e.g. ``qwen2``) and
``controlvector.layer_count`` (how many direction tensors the file holds, as llama.cpp's
``cvector-generator`` writes it), and one float32 1-D tensor ``direction.N`` of ``n_embd``
values per steered layer (N as in :mod:`melbo_tl.export.layers`). llama.cpp reads only the
tensors; the keys are hints for people and tools. melbo_tl adds ``melbo_tl.n_layers`` (the
model's block count) and ``melbo_tl.source`` (JSON: run, method, vector, scale, hook) when it
knows them; other tools ignore them.

>>> cv = ControlVector({7: vector}, model_hint="qwen2", n_layers=24)
>>> write_control_vector("bomb.gguf", cv)
>>> read_control_vector("bomb.gguf").directions[7]
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

ARCH = "controlvector"
MODEL_HINT_KEY = f"{ARCH}.model_hint"
LAYER_COUNT_KEY = f"{ARCH}.layer_count"
N_LAYERS_KEY = "melbo_tl.n_layers"
SOURCE_KEY = "melbo_tl.source"
TENSOR_PREFIX = "direction."


@dataclass
class ControlVector:
    """One control vector in memory.

    Fields: ``directions`` llama.cpp layer N → the ``[n_embd]`` vector added after block N
    (float32); ``model_hint`` the architecture it was made for ("" if unknown); ``n_layers``
    the model's block count when known (melbo_tl's own key; other tools' files lack it);
    ``source`` where it came from (free-form JSON-able dict, melbo_tl's own key).
    """

    directions: dict[int, Float[Tensor, " n_embd"]]
    model_hint: str = ""
    n_layers: int | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("A control vector needs at least one direction.")
        widths = {int(v.shape[-1]) for v in self.directions.values()}
        bad = [n for n, v in self.directions.items() if v.ndim != 1]
        if bad or len(widths) != 1:
            raise ValueError(
                f"Control-vector directions must all be 1-D of one width; got shapes "
                f"{ {n: tuple(v.shape) for n, v in self.directions.items()} }."
            )
        zero = [n for n in self.directions if isinstance(n, bool) or not isinstance(n, int) or n < 1]
        if zero:
            raise ValueError(f"Direction layers {zero} are invalid: llama.cpp numbers them from 1 (direction.1, …).")

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.directions.values())).shape[-1])


def write_control_vector(path: str | Path, cv: ControlVector) -> Path:
    """Write ``cv`` as a GGUF control vector (atomically: temp file in the same folder, then rename)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=ARCH)
        writer.add_string(MODEL_HINT_KEY, cv.model_hint)
        writer.add_int32(LAYER_COUNT_KEY, len(cv.directions))
        if cv.n_layers is not None:
            writer.add_int32(N_LAYERS_KEY, int(cv.n_layers))
        if cv.source:
            writer.add_string(SOURCE_KEY, json.dumps(cv.source, default=str))
        for layer in sorted(cv.directions):
            data = cv.directions[layer].detach().to("cpu", torch.float32).numpy()
            writer.add_tensor(f"{TENSOR_PREFIX}{layer}", np.ascontiguousarray(data))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_control_vector(path: str | Path) -> ControlVector:
    """Read a GGUF control vector (ours or another tool's), with llama.cpp's loader's checks:
    tensors named ``direction.N`` with N ≥ 1, float32, 1-D, all of one width."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Control-vector file {path} does not exist.")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the gguf package raises ValueError/struct errors on non-GGUF bytes
        raise ValueError(f"{path} is not a readable GGUF file ({exc}).") from None
    arch = _string(reader, "general.architecture")
    if arch not in (None, ARCH):
        raise ValueError(f"{path} is a GGUF file of architecture {arch!r}, not a control vector ({ARCH!r}).")
    directions: dict[int, Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if not name.startswith(TENSOR_PREFIX) or not name[len(TENSOR_PREFIX) :].isdigit():
            raise ValueError(f"{path}: tensor {name!r} is not a direction tensor ('direction.N', N ≥ 1).")
        layer = int(name[len(TENSOR_PREFIX) :])
        if layer < 1:
            raise ValueError(f"{path}: tensor {name!r} has layer 0; llama.cpp numbers direction layers from 1.")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len([d for d in tensor.shape if d != 1]) > 1:
            raise ValueError(
                f"{path}: tensor {name!r} is {tensor.tensor_type.name} of shape {list(tensor.shape)}; "
                "llama.cpp reads only 1-D F32 direction tensors."
            )
        values = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        # llama.cpp sums tensors that name the same layer (several directions in one file)
        directions[layer] = directions[layer] + values if layer in directions else values
    if not directions:
        raise ValueError(f"{path} holds no direction tensors.")
    source = _string(reader, SOURCE_KEY)
    n_layers = _int(reader, N_LAYERS_KEY)
    return ControlVector(
        directions, model_hint=_string(reader, MODEL_HINT_KEY) or "", n_layers=n_layers,
        source=json.loads(source) if source else {},
    )  # fmt: skip


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.parts[f.data[0]]


def _string(reader: Any, key: str) -> str | None:
    part = _field(reader, key)
    return None if part is None else bytes(part).decode("utf-8")


def _int(reader: Any, key: str) -> int | None:
    part = _field(reader, key)
    return None if part is None else int(part[0])
