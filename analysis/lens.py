"""Reading vectors and steered runs through the unembedding.

Two views, both wrapping TransformerLens' ``logit_readout`` / ``logit_lens`` (which apply the
real final norm and unembedding): what a vector *says* when read directly as a residual state
(top promoted and suppressed tokens), and how a steered run's next-token prediction forms
layer by layer compared with the unsteered run (probability and rank of chosen tokens, e.g.
refusal starts "I"/"As" against compliance starts "Sure"/"Here").

>>> readout = vector_readout(model, v, top_k=10)
>>> traj = lens_trajectory(model, text, steer, tokens={"refuse": ["I"], "comply": ["Sure"]})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from melbo_tl.forward import run_forward
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import on_model, to_result
from melbo_tl.prompts import PromptLike, prepare_prompts
from melbo_tl.steering.interventions import Intervention

DEFAULT_TOKENS: dict[str, list[str]] = {"refusal": ["I", "As"], "compliance": ["Sure", "Here", "To", "Certainly"]}


@dataclass
class VectorReadout:
    """A vector read as a residual state through the final norm and unembedding.

    Fields:
        promoted: the ``top_k`` tokens with the highest logits, as ``[token, logit]`` pairs.
        suppressed: the ``top_k`` tokens with the lowest logits, lowest first.
        norm: the vector's L2 norm (the final norm rescales it, so the readout ignores it).
    """

    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    norm: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vector_readout(model: Any, vector: Float[Tensor, " d_model"], *, top_k: int = 10) -> VectorReadout:
    """Top promoted and suppressed tokens of ``vector`` (``logit_readout`` over the full vocabulary)."""
    from transformer_lens.tools.analysis import logit_readout

    if vector.ndim != 1 or vector.shape[0] != int(model.cfg.d_model):
        raise ValueError(f"vector has shape {tuple(vector.shape)}; expected [d_model = {int(model.cfg.d_model)}].")
    if top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}.")
    logits = to_result(logit_readout(model, on_model(vector, model)[None]).values[0])
    tok = chat_tokenizer(model)
    hi = torch.topk(logits, top_k)
    lo = torch.topk(-logits, top_k)
    return VectorReadout(
        promoted=[(tok.decode([int(i)]), float(v)) for v, i in zip(hi.values, hi.indices)],
        suppressed=[(tok.decode([int(i)]), float(-v)) for v, i in zip(lo.values, lo.indices)],
        norm=float(vector.float().norm()),
    )


@dataclass
class LensTrajectory:
    """Per-layer logit lens at the last prompt token, unsteered vs steered.

    Fields:
        labels: the residual-stack entry of each row (embeddings, then after each block).
        groups: ``{group: [token, …]}`` the chosen tokens (first token id of each word).
        prob: ``{"unsteered"|"steered": {group: [per layer total probability of the group's tokens]}}``.
        rank: ``{"unsteered"|"steered": {group: [per layer best (lowest) rank among the group's tokens]}}``.
    """

    labels: list[str]
    groups: dict[str, list[str]]
    prob: dict[str, dict[str, list[float]]]
    rank: dict[str, dict[str, list[int]]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    ids = []
    for w in words:
        pieces = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not pieces:
            raise ValueError(f"Token {w!r} encodes to nothing.")
        ids.append(int(pieces[0]))
    return ids


@torch.no_grad()
def lens_trajectory(
    model: Any,
    prompt: PromptLike,
    steer: Intervention | None,
    *,
    tokens: Mapping[str, Sequence[str]] = DEFAULT_TOKENS,
    chat: bool = True,
) -> LensTrajectory:
    """Logit lens of the last token of ``prompt`` (a user message; ``chat=False``: a text used as it
    is), without and with ``steer``."""
    from transformer_lens import ActivationCache
    from transformer_lens.tools.analysis import logit_lens

    if not prompt:
        raise ValueError("lens_trajectory needs a non-empty prompt.")
    [text] = prepare_prompts(model, [prompt], chat=chat)
    if not tokens:
        raise ValueError("lens_trajectory needs at least one token group.")
    tok = chat_tokenizer(model)
    groups = {g: list(words) for g, words in tokens.items()}
    ids = {g: _token_ids(tok, words) for g, words in groups.items()}
    flat = [i for g in groups for i in ids[g]]
    resid = [n for n in model.hook_dict if "resid" in n]
    prob: dict[str, dict[str, list[float]]] = {}
    rank: dict[str, dict[str, list[int]]] = {}
    labels: list[str] = []
    for name, steers in (("unsteered", []), ("steered", [steer] if steer is not None else [])):
        fwd = run_forward(model, [text], steers, record=resid, logits="none")
        cache = ActivationCache(fwd.activations, model)
        result = logit_lens(cache, targets=flat, return_type="probs")
        values = result.readout.values.float().cpu().reshape(len(result.labels), -1)  # [layers, targets]
        ranks = result.readout.target_ranks.cpu().reshape(len(result.labels), -1)
        labels = [str(label) for label in result.labels]
        prob[name], rank[name] = {}, {}
        col = 0
        for g in groups:
            n = len(ids[g])
            prob[name][g] = values[:, col : col + n].sum(-1).tolist()
            rank[name][g] = ranks[:, col : col + n].min(-1).values.int().tolist()
            col += n
    return LensTrajectory(labels=labels, groups=groups, prob=prob, rank=rank)


def lens_figure(traj: LensTrajectory, *, title: str = "Logit lens at the last prompt token") -> go.Figure:
    """Probability (top) and rank (bottom, log scale) of each token group by layer; dashed = unsteered."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("probability", "best rank (log)"))
    x = list(range(len(traj.labels)))
    for i, group in enumerate(traj.groups):
        color = ["#c0392b", "#2471a3", "#1e8449", "#7d3c98", "#b9770e"][i % 5]
        for run, dash in (("unsteered", "dash"), ("steered", "solid")):
            label = f"{group} ({run})"
            fig.add_trace(
                go.Scatter(
                    x=x, y=traj.prob[run][group], name=label, line={"color": color, "dash": dash}, legendgroup=label
                ),
                1,
                1,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[r + 1 for r in traj.rank[run][group]],
                    name=label,
                    line={"color": color, "dash": dash},
                    legendgroup=label,
                    showlegend=False,
                ),
                2,
                1,
            )
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=traj.labels, row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=600)
    return fig
