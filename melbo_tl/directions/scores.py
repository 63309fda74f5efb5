"""Result values of refusal-direction selection: per-candidate scores, the chosen direction,
the no-candidate error, and the score table as text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from melbo_tl.steering.interventions import AblateDirection
from melbo_tl.steering.results import VectorResult
from melbo_tl.steering.sites import Site


@dataclass
class CandidateScore:
    """Scores of one candidate r_layer,pos.

    Fields: ``layer``, ``pos`` (negative offset from the prompt's end); ``norm`` ‖r‖; ``bypass``
    mean refusal log-odds on harmful prompts with r̂ ablated (lower = refusal removed);
    ``induce`` mean refusal log-odds on harmless prompts with r added at
    ``blocks.layer.hook_resid_pre``; ``kl`` mean last-position KL on harmless prompts,
    unsteered ‖ ablated; ``zero_vector`` True if the harmful and harmless means coincide (then
    the scores are the baseline's); ``rejected`` why it failed the filters ("" if it passed).
    """

    layer: int
    pos: int
    norm: float
    bypass: float
    induce: float
    kl: float
    zero_vector: bool = False
    rejected: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> CandidateScore:
        return cls(
            **{k: row[k] for k in ("layer", "pos", "norm", "bypass", "induce", "kl")},
            zero_vector=bool(row.get("zero_vector")),
        )


@dataclass
class Selection(VectorResult):
    """The chosen refusal direction and why. Steers itself: ``vectors`` is ``[1, d_model]`` the raw
    r, so ``intervention(0)`` adds r (induces refusal); :meth:`ablation` removes r̂ (bypasses it).

    Fields:
        layer, pos: the chosen candidate (vector acts at ``blocks.layer.hook_resid_pre``).
        direction: ``[d_model]`` unit vector r̂ (ablate it to bypass refusal).
        raw: ``[d_model]`` the unnormalized difference in means r (add it to induce refusal).
        scores: one :class:`CandidateScore` per evaluated candidate, in (layer, pos) order.
        baseline: mean refusal log-odds without any intervention, ``{"harmful": …, "harmless": …}``.
        thresholds: the filters used (``max_layer_frac``, ``kl_threshold``, ``induce_threshold``).
        n_harmful_val, n_harmless_val: validation prompt counts.
        seconds_per_candidate: mean wall time to score one candidate.
    """

    layer: int
    pos: int
    direction: Float[Tensor, " d_model"]
    raw: Float[Tensor, " d_model"]
    scores: list[CandidateScore]
    baseline: dict[str, float]
    thresholds: dict[str, float]
    n_harmful_val: int = 0
    n_harmless_val: int = 0
    seconds_per_candidate: float = 0.0

    @property
    def site(self) -> Site:
        """Where r acts: the residual entering block ``layer``."""
        return Site(self.layer)

    @property
    def hook(self) -> str:
        return self.site.hook

    @property
    def vectors(self) -> Tensor:  # type: ignore[override]
        return self.raw[None]

    def ablation(self) -> AblateDirection:
        """Directional ablation of r̂ at every residual write (bypasses refusal)."""
        return AblateDirection(self.direction)

    def summary(self) -> dict[str, Any]:
        c = self.chosen
        return {
            "candidate": f"layer {self.layer}, pos {self.pos}",
            "bypass (log-odds)": f"{c.bypass:.3f} (harmful baseline {self.baseline['harmful']:.3f})",
            "induce (log-odds)": f"{c.induce:.3f} (harmless baseline {self.baseline['harmless']:.3f})",
            "kl": c.kl,
            "candidates scored": len(self.scores),
        }

    @property
    def chosen(self) -> CandidateScore:
        return next(s for s in self.scores if (s.layer, s.pos) == (self.layer, self.pos))

    def table(self) -> str:
        return format_table(self.scores, self.baseline, chosen=(self.layer, self.pos))

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready."""
        return {
            "layer": self.layer,
            "pos": self.pos,
            "raw_norm": float(self.raw.norm()),
            "baseline": dict(self.baseline),
            "thresholds": dict(self.thresholds),
            "n_harmful_val": self.n_harmful_val,
            "n_harmless_val": self.n_harmless_val,
            "seconds_per_candidate": self.seconds_per_candidate,
            "scores": [s.to_dict() for s in self.scores],
        }


class NoDirectionError(ValueError):
    """No candidate passed the filters. ``scores`` and ``baseline`` hold the full evaluation."""

    def __init__(self, message: str, scores: list[CandidateScore], baseline: dict[str, float]):
        super().__init__(message)
        self.scores = scores
        self.baseline = baseline


def format_table(
    scores: Sequence[CandidateScore],
    baseline: dict[str, float],
    *,
    chosen: tuple[int, int] | None = None,
    filtered: bool = True,
) -> str:
    """The score table as aligned text: one row per candidate with its status (``filtered=False``:
    scores no filter has been applied to yet; no status column)."""
    lines = [
        f"baseline refusal log-odds: harmful {baseline['harmful']:.3f}, harmless {baseline['harmless']:.3f}",
        f"{'layer':>5} {'pos':>4} {'norm':>8} {'bypass':>8} {'induce':>8} {'kl':>8}  status",
    ]
    if not filtered:
        lines[1] = lines[1].replace("  status", "")
    for s in scores:
        mark = "" if not filtered else "  " + ("CHOSEN" if chosen == (s.layer, s.pos) else (s.rejected or "ok"))
        lines.append(f"{s.layer:>5} {s.pos:>4} {s.norm:>8.3f} {s.bypass:>8.3f} {s.induce:>8.3f} {s.kl:>8.4f}{mark}")
    return "\n".join(lines)


def _finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


@dataclass
class CandidateScores:
    """Every scored candidate, before any filter is applied (see :func:`score_candidates`).

    Fields: ``scores`` one :class:`CandidateScore` per candidate in (layer, pos) order (their
    ``rejected`` is filled in by :func:`choose_direction`); ``baseline`` mean refusal log-odds
    without intervention (``harmful``, ``harmless``); ``max_layer_frac`` the layer cut applied;
    ``n_harmful_val``, ``n_harmless_val`` prompt counts; ``seconds_per_candidate`` mean wall time
    of the candidates scored in this call.
    """

    scores: list[CandidateScore]
    baseline: dict[str, float]
    max_layer_frac: float
    n_harmful_val: int
    n_harmless_val: int
    seconds_per_candidate: float = 0.0

    def table(self) -> str:
        return format_table(self.scores, self.baseline, filtered=False)
