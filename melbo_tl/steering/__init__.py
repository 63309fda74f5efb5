"""Steering interventions as TransformerLens hook points."""

from melbo_tl.steering.interventions import (
    AblateDirection,
    AddVector,
    ClampVector,
    Intervention,
    MLPAdapter,
    ablation_hook_names,
    apply,
    hooks_for,
)
from melbo_tl.steering.layout import TokenLayout, current_layout, token_layout
from melbo_tl.steering.sites import Site, check_hook, check_layer, parse_site, resid_hook

__all__ = [
    "AblateDirection",
    "AddVector",
    "ClampVector",
    "Intervention",
    "MLPAdapter",
    "Site",
    "TokenLayout",
    "ablation_hook_names",
    "apply",
    "check_hook",
    "check_layer",
    "current_layout",
    "hooks_for",
    "parse_site",
    "resid_hook",
    "token_layout",
]
