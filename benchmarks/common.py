"""What the benchmarks share: loading the model to time (on a device, in a dtype), and timing.

``--model random-qwen`` builds a random-weight model of the embedded Qwen2.5-Coder-0.5B's exact
shape from its config (the embedded cache, or ``.gpu/qwen_cfg`` staged by
``../shared/tools/gpu-prepare`` on a GPU machine that cannot carry the weights): the same compute
as the real model, for timings where the weights do not matter.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model spec, or random-qwen")
    parser.add_argument("--device", default=None, help="cpu, cuda, … [default: cuda when available]")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16,float16")


def dtypes(spec: str) -> list[torch.dtype]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad:
        raise SystemExit(f"--dtypes {bad} not among {list(DTYPES)}")
    return [DTYPES[n] for n in names]


def _random_qwen_dir() -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from melbo_tl.models.embedded import EMBEDDED, ensure_cached

    staged = Path(".gpu/qwen_cfg")
    source = staged if (staged / "config.json").is_file() else ensure_cached("qwen2.5-coder-0.5b-instruct")
    assert "qwen2.5-coder-0.5b-instruct" in EMBEDDED
    out = Path(tempfile.mkdtemp(prefix="random_qwen_"))
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def load(spec: str, *, device: str | None, dtype: torch.dtype) -> Any:
    from melbo_tl.models import load_model

    os.environ.setdefault("TQDM_DISABLE", "1")
    where = str(_random_qwen_dir()) if spec == "random-qwen" else spec
    return load_model(where, device=device, dtype=dtype)


def sync(model: Any) -> None:
    """Wait for queued GPU work, so a timing covers it."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(model: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronized before and after, and its result."""
    sync(model)
    started = time.perf_counter()
    out = fn()
    sync(model)
    return time.perf_counter() - started, out
