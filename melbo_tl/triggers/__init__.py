"""Trigger recovery: from a steering vector's behaviour back to an input that fires it unsteered.

Importing the package loads no torch (the command line reads :class:`RecoveryConfig` before
loading a model); the recovery itself is imported on first use.
"""

from __future__ import annotations

from typing import Any

from melbo_tl.triggers.config import RecoveryConfig

__all__ = ["PromptRecovery", "Recovery", "RecoveryConfig", "load_recovery", "recover_trigger"]


def __getattr__(name: str) -> Any:
    if name in {"PromptRecovery", "Recovery", "load_recovery", "recover_trigger"}:
        from melbo_tl.triggers import recovery

        return getattr(recovery, name)
    raise AttributeError(f"module 'melbo_tl.triggers' has no attribute {name!r}")
