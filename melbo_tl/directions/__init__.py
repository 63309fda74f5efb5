"""Supervised refusal direction (Arditi et al.): difference in means, selection, run folders.
Names are imported on first use (:mod:`melbo_tl.lazy`): the config reads without torch.

>>> cands = diff_in_means(model, harmful_train, harmless_train)
>>> sel = select_direction(model, cands, harmful_val, harmless_val)
>>> save_refusal_direction(sel, model, "runs/refusal")
"""

from melbo_tl.lazy import lazy_names

_WHERE = {
    **dict.fromkeys(
        ("CandidateDirections", "diff_in_means", "mean_activations", "post_instruction_positions"),
        "melbo_tl.directions.diff_in_means",
    ),
    **dict.fromkeys(
        ("METHOD", "import_refusal_direction_artifacts", "load_refusal_direction", "save_refusal_direction"),
        "melbo_tl.directions.io",
    ),
    **dict.fromkeys(
        ("CandidateScore", "CandidateScores", "NoDirectionError", "Selection"), "melbo_tl.directions.scores"
    ),
    **dict.fromkeys(("choose_direction", "score_candidates", "select_direction"), "melbo_tl.directions.selection"),
    "RefusalDirectionConfig": "melbo_tl.directions.config",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())
