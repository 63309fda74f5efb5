"""Loading models as TransformerBridges: embedded GGUF wheels, local directories, hub ids.

The names below are imported on first use (PEP 562): ``melbo models`` and ``--help`` need the
embedded-model table without paying for torch and TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_MODEL": "melbo_tl.models.embedded",
    "EMBEDDED": "melbo_tl.models.embedded",
    "ModelFileError": "melbo_tl.models.embedded",
    "describe_cache": "melbo_tl.models.embedded",
    "ModelInfo": "melbo_tl.models.loading",
    "chat_tokenizer": "melbo_tl.models.loading",
    "default_device": "melbo_tl.models.loading",
    "load_model": "melbo_tl.models.loading",
    "model_info": "melbo_tl.models.loading",
    "build_tiny_model": "melbo_tl.models.tiny",
    "resolve_dtype": "melbo_tl.models.precision",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'melbo_tl.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
