"""Run llama.cpp (through llama-cpp-python, the optional ``llamacpp`` extra) with a control vector.

For checking an exported vector where it will be used: greedy completions and next-token logits
of a GGUF model in llama.cpp, steered by a :class:`ControlVector` laid out exactly as llama.cpp's
``common_control_vector_load`` lays out a file (``direction.N`` at offset ``(N − 1)·n_embd`` of one
buffer, then ``llama_set_adapter_cvec`` for layers 1 … n_layers). Each :class:`LlamaCppModel` holds
one context with one fixed control vector (a fresh context per condition: nothing carries over).

>>> lm = LlamaCppModel("qwen.gguf", control_vector=read_control_vector("bomb.gguf"), scale=1.0)
>>> lm.greedy(lm.tokenize(text), max_new_tokens=48)
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from melbo_tl.export.gguf_control_vector import ControlVector

INSTALL_HINT = "llama-cpp-python is not installed: run `make test-llama-cpp` (or pip install 'melbo_tl[llamacpp]')."


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or an ImportError that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return llama_cpp


def control_vector_buffer(cv: ControlVector, scale: float = 1.0) -> np.ndarray:
    """The flat float32 buffer llama.cpp's loader builds from a file: layer N at ``[(N−1)·n_embd, N·n_embd)``."""
    out = np.zeros(cv.n_embd * max(cv.directions), dtype=np.float32)
    for layer, vector in cv.directions.items():
        out[(layer - 1) * cv.n_embd : layer * cv.n_embd] += scale * vector.detach().cpu().float().numpy()
    return out


@contextlib.contextmanager
def _plain_weight_buffers(bindings: Any) -> Iterator[None]:
    """Load models without llama.cpp's extra weight buffers (``use_extra_bufts = false``, the CLI's
    ``--no-repack``). A native build on a CPU with AMX routes matmuls to ggml's AMX kernels, which
    crashed (SIGSEGV in ``ggml_backend_amx_mul_mat``) in this project's VM; the plain CPU kernels
    compute the same quantized products. llama-cpp-python does not expose the flag, so the
    default-params function it calls is wrapped for the duration of the load."""
    original = bindings.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = defaults
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


class LlamaCppModel:
    """A llama.cpp context on ``gguf`` with every position's logits kept, optionally steered."""

    def __init__(
        self,
        gguf: str | Path,
        *,
        control_vector: ControlVector | None = None,
        scale: float = 1.0,
        n_ctx: int = 512,
        threads: int = 2,
        seed: int = 0,
    ) -> None:
        llama_cpp = import_llama_cpp()
        with _plain_weight_buffers(llama_cpp.llama_cpp):
            self.llm = llama_cpp.Llama(
                model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads,
                n_threads_batch=threads, seed=seed, verbose=False,
            )  # fmt: skip
        self.n_layers = int(llama_cpp.llama_model_n_layer(self.llm._model.model))
        if control_vector is not None:
            if control_vector.n_embd != self.llm.n_embd():
                raise ValueError(
                    f"Control vector width {control_vector.n_embd} ≠ the model's n_embd {self.llm.n_embd()}."
                )
            data = control_vector_buffer(control_vector, scale)
            self._data = (ctypes.c_float * len(data))(*data.tolist())  # kept alive with the context
            err = llama_cpp.llama_set_adapter_cvec(
                self.llm._ctx.ctx, self._data, len(data), control_vector.n_embd, 1, self.n_layers
            )
            if err:
                raise RuntimeError(f"llama_set_adapter_cvec failed with code {err}.")

    def tokenize(self, text: str) -> list[int]:
        """Token ids of an already formatted text (special tokens parsed, no BOS added)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """``[len(ids), n_vocab]`` next-token logits at every position of ``ids``."""
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: Sequence[int], *, max_new_tokens: int, stops: Sequence[int] = ()) -> list[int]:
        """Greedy continuation of ``ids`` (argmax of the logits; no sampler), cut before a stop token."""
        stop = {*stops, int(self.llm.token_eos())}
        self.llm.reset()
        self.llm.eval(list(ids))
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            if token in stop:
                break
            out.append(token)
            self.llm.eval([token])
        return out

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Free the context and model now (rather than at interpreter exit)."""
        self.llm.close()
