"""Steering interventions as TransformerLens hook points, the sites they act at, and the results
that steer themselves. Names are imported on first use (:mod:`melbo_tl.lazy`): sites parse
without torch."""

from melbo_tl.lazy import lazy_names

_INTERVENTIONS = "melbo_tl.steering.interventions"
_SITES = "melbo_tl.steering.sites"
_WHERE = {
    **dict.fromkeys(
        ("AblateDirection", "AddVector", "ClampVector", "Intervention", "MLPAdapter", "ablation_hook_names", "apply",
         "hooks_for"),
        _INTERVENTIONS,
    ),
    **dict.fromkeys(("TokenLayout", "current_layout", "token_layout"), "melbo_tl.steering.layout"),
    **dict.fromkeys(("Site", "check_hook", "check_layer", "parse_site", "resid_hook"), _SITES),
    **dict.fromkeys(("SteeringResult", "VectorResult"), "melbo_tl.steering.results"),
}  # fmt: skip
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())
