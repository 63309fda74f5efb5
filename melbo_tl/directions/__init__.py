"""Supervised refusal direction (Arditi et al.): difference in means, selection, run folders.

>>> cands = diff_in_means(model, harmful_train, harmless_train)
>>> sel = select_direction(model, cands, harmful_val, harmless_val)
>>> save_refusal_direction(sel, model, "runs/refusal")
"""

from melbo_tl.directions.diff_in_means import (
    CandidateDirections,
    diff_in_means,
    mean_activations,
    post_instruction_positions,
)
from melbo_tl.directions.io import (
    METHOD,
    import_refusal_direction_artifacts,
    load_refusal_direction,
    save_refusal_direction,
)
from melbo_tl.directions.scores import CandidateScore, CandidateScores, NoDirectionError, Selection
from melbo_tl.directions.selection import choose_direction, score_candidates, select_direction

__all__ = [
    "METHOD",
    "CandidateDirections",
    "CandidateScore",
    "CandidateScores",
    "NoDirectionError",
    "Selection",
    "choose_direction",
    "diff_in_means",
    "import_refusal_direction_artifacts",
    "load_refusal_direction",
    "mean_activations",
    "post_instruction_positions",
    "save_refusal_direction",
    "score_candidates",
    "select_direction",
]
