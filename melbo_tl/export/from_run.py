"""One entry of a run folder as a llama.cpp control vector, or a clear reason why it is not one.

llama.cpp can express exactly one kind of intervention: a fixed vector added to the residual
stream after a block, at every token (prompt and generated alike). An entry qualifies when its
intervention (:func:`melbo_tl.runs.intervention_from_run`) is an :class:`AddVector` of one
``[d_model]`` vector with positions ``all`` at a residual site llama.cpp steers
(:mod:`melbo_tl.export.layers`). Nothing is approximated: adapters (weight changes), clamping and
ablation (which depend on the activation), and vectors restricted to some positions are refused.

>>> cv = control_vector_from_run(load_run("runs/bomb_dct"), 12, scale=1.0)
>>> write_control_vector("bomb.gguf", cv)
"""

from __future__ import annotations

from typing import Any

import torch

from melbo_tl.artifacts import Run
from melbo_tl.export.gguf_control_vector import ControlVector
from melbo_tl.export.layers import llama_cpp_layer
from melbo_tl.runs import intervention_from_run
from melbo_tl.steering.interventions import AddVector, describe

# transformers' architecture class → llama.cpp's architecture name (the file's model hint)
LLAMA_CPP_ARCH = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "GPT2LMHeadModel": "gpt2",
}


def model_hint(architecture: str | None) -> str:
    """llama.cpp's name for a transformers architecture class ("" when unknown)."""
    if not architecture:
        return ""
    return LLAMA_CPP_ARCH.get(architecture, architecture.removesuffix("ForCausalLM").lower())


def control_vector_from_run(run: Run, index: int, *, scale: float = 1.0, run_path: str | None = None) -> ControlVector:
    """Entry ``index`` of ``run`` times ``scale`` as a one-direction :class:`ControlVector`.

    Raises ValueError when the entry cannot be expressed in llama.cpp (see the module docstring);
    the message says what the entry is and what would be exportable.
    """
    n_layers = run.meta.get("n_layers")
    if not isinstance(n_layers, int):
        raise ValueError("This run's run.json has no 'n_layers'; it is needed to place the vector in llama.cpp.")
    steer = intervention_from_run(run, index, scale=scale)
    method = run.meta.get("method")
    if not isinstance(steer, AddVector):
        raise ValueError(
            f"Entry {index} of this {method!r} run is not an added vector ({describe(steer)}); llama.cpp control "
            "vectors only add a fixed vector to the residual stream, so adapters, clamps and ablations cannot be exported."
        )
    if steer.vector.ndim != 1:
        raise ValueError(
            f"Entry {index} holds per-row vectors of shape {tuple(steer.vector.shape)}; export needs one vector."
        )
    if steer.positions.kind != "all":
        raise ValueError(
            f"Entry {index} acts only at positions {str(steer.positions)!r}; llama.cpp adds a control vector at every "
            "token (prompt and generated), so only vectors with positions 'all' can be exported."
        )
    layer = llama_cpp_layer(steer.hook, n_layers)
    vector = (steer.vector.detach().to("cpu", torch.float32) * float(steer.scale)).contiguous()
    source: dict[str, Any] = {
        "run": run_path,
        "method": method,
        "vector": index,
        "scale": scale,
        "hook": steer.hook,
        "model": run.meta.get("model", {}).get("spec"),
        "model_revision": run.meta.get("model", {}).get("revision"),
    }
    return ControlVector(
        {layer: vector}, model_hint=model_hint(run.meta.get("model", {}).get("architecture")), n_layers=n_layers,
        source=source,
    )  # fmt: skip
