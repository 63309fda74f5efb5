"""What ``dtype="auto"`` means: bfloat16 where the hardware computes it natively, else float32.

Measured on the bomb prompt (README, "Speed: MELBO modes and dtypes"): on a Zen 4 CPU with
AVX-512 BF16, bfloat16 is about 2× faster in every MELBO mode and for DCT, and its vectors,
re-scored in float32, lose 0.2–0.4% of the objective (under the 1% the default had to meet).
Without native bf16 units (older x86 CPUs) torch emulates bfloat16 and it is slower than
float32, so there the default stays float32. ``MELBO_TL_DTYPE`` overrides the choice (e.g.
``MELBO_TL_DTYPE=float32`` for bit-for-bit float32 runs on any machine); run.json records the
dtype a run used.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DTYPE_ENV = "MELBO_TL_DTYPE"
# CPU feature flags (Linux /proc/cpuinfo) that mean bfloat16 matmuls run in hardware.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty elsewhere (then: float32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (so bfloat16 is the faster choice)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def parse_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """A torch dtype, or ``"auto"``; names and aliases (bf16, fp32, …) accepted, others refused."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPE_NAMES)}.")
        return dtype
    name = ALIASES.get(str(dtype).strip().lower(), str(dtype).strip().lower())
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)} (or bf16, fp32, fp16).")
    return name if name == "auto" else getattr(torch, name)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a model on ``device`` computes in: ``dtype`` itself, or for ``"auto"`` the
    ``MELBO_TL_DTYPE`` setting if there is one, else bfloat16 with native support, else float32."""
    parsed = parse_dtype(dtype)
    if isinstance(parsed, torch.dtype):
        return parsed
    override = os.environ.get(DTYPE_ENV, "").strip()
    if override:
        chosen = parse_dtype(override)
        if not isinstance(chosen, torch.dtype):
            raise ValueError(f"{DTYPE_ENV}={override!r} must name a dtype (float32, bfloat16, float16), not auto.")
        return chosen
    return torch.bfloat16 if native_bf16(device) else torch.float32
