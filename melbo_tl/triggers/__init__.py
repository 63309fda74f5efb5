"""Trigger recovery: from a steering vector's behaviour back to an input that fires it unsteered."""

from melbo_tl.triggers.recovery import PromptRecovery, Recovery, RecoveryConfig, load_recovery, recover_trigger

__all__ = ["PromptRecovery", "Recovery", "RecoveryConfig", "load_recovery", "recover_trigger"]
