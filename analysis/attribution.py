"""Which layers and heads carry a steering vector's effect on the refusal log-odds?

Two estimates, both linearized at the *unsteered* run, on the refusal log-odds ``m`` of the
next token after each prompt (:func:`melbo_tl.evaluate.refusal.log_odds`):

* **Direct effect** (direct logit attribution of steered minus unsteered): each component's
  change of output at the last token, Δc, dotted with g = ∂m/∂(final residual). The final
  residual is the sum of the embedding, every attention and MLP output and whatever the
  intervention injects, so the terms (plus the injected vector's own ``direct`` term) add up to
  g·Δx_final, the first-order change of m, which is reported beside the true change.
* **Attribution patching** between steered and unsteered runs: for each node a (attention
  output, MLP output, head output ``z``), (a_steered − a_unsteered)·∂m/∂a summed over positions,
  the first-order estimate of patching that node's steered value into the unsteered run
  (its total effect, through later layers too).

TransformerLens' ``direct_logit_attribution`` and ``attribution_patch`` are not used here:
the first needs compatibility mode with the final norm folded into W_U (a one-way rewrite of
the loaded model) and has no term for an added vector; the second patches between two token
inputs, while here the two runs differ by a hook on the same tokens.

>>> att = steering_attribution(model, texts, steer)
>>> att.dla_layers["mlp"], att.patch_layers["attn"], att.patch_heads
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from melbo_tl.evaluate.refusal import log_odds, refusal_token_ids
from melbo_tl.forward import as_batch, run_forward
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.prompts import PromptLike, prepare_prompts
from melbo_tl.steering.interventions import Intervention
from melbo_tl.steering.sites import attn_hook, attn_out_hook, mlp_out_hook, resid_hook


@dataclass
class SteeringAttribution:
    """Per-layer and per-head attribution of a steer's effect on the refusal log-odds.

    Fields (all averaged over prompts):
        log_odds_unsteered, log_odds_steered: the metric in both runs.
        linear_estimate: g·Δx_final, the first-order change the direct-effect terms add up to.
        dla_layers: ``{"attn"|"mlp": [n_layers]}`` direct effect of each block's output change.
        dla_heads: ``[n_layers][n_heads]`` direct effect of each head's output change.
        dla_direct: direct effect of what the intervention injects into the residual itself.
        dla_embed: direct effect of the embedding change (zero unless the steer acts there).
        patch_layers: ``{"attn"|"mlp": [n_layers]}`` attribution-patching estimates.
        patch_heads: ``[n_layers][n_heads]`` attribution-patching estimates per head.
        n_prompts: how many prompts were averaged.
    """

    log_odds_unsteered: float
    log_odds_steered: float
    linear_estimate: float
    dla_layers: dict[str, list[float]]
    dla_heads: list[list[float]]
    dla_direct: float
    dla_embed: float
    patch_layers: dict[str, list[float]]
    patch_heads: list[list[float]]
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _node_names(n_layers: int) -> list[str]:
    names = ["hook_embed"]
    for layer in range(n_layers):
        names += [attn_hook(layer, "hook_z"), attn_out_hook(layer), mlp_out_hook(layer)]
    return [*names, resid_hook(n_layers - 1, "post")]


def _run(
    model: Any, batch: Any, steers: Sequence[Intervention], names: list[str], ids: list[int], grad: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """Refusal log-odds per row and the activations at ``names`` (with their graph if ``grad``)."""
    store: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(acts: Tensor, hook: Any) -> Tensor:
            if grad and not acts.requires_grad:
                acts = acts.detach().requires_grad_(True)
            store[name] = acts
            return acts

        return keep

    with torch.set_grad_enabled(grad):
        fwd = run_forward(model, batch, steers, hooks=[(n, keeper(n)) for n in names], logits="last")
        assert fwd.logits is not None
        metric = log_odds(torch.log_softmax(fwd.logits.float(), dim=-1), ids)
    return metric, store


def steering_attribution(
    model: Any,
    prompts: Sequence[PromptLike],
    steer: Intervention,
    *,
    chat: bool = True,
    refusal_ids: Sequence[int] | None = None,
) -> SteeringAttribution:
    """Direct-effect and attribution-patching scores of ``steer`` over ``prompts`` (user messages;
    ``chat=False``: texts used as they are)."""
    texts = prepare_prompts(model, prompts, chat=chat)
    tok = chat_tokenizer(model)
    ids = list(refusal_ids) if refusal_ids is not None else refusal_token_ids(tok)
    L = int(model.cfg.n_layers)
    names = _node_names(L)
    batch = as_batch(model, list(texts))
    mask = (batch.token_index >= 0).float()[..., None]
    with torch.no_grad():
        m_steer, steered = _run(model, batch, [steer], names, ids, grad=False)
    m_base, base = _run(model, batch, [], names, ids, grad=True)
    grads = dict(zip(names, torch.autograd.grad(m_base.sum(), [base[n] for n in names], allow_unused=True)))
    n = len(texts)
    W_O = model.W_O.detach().float()  # [layers, heads, d_head, d_model]
    g_final = grads[names[-1]][:, -1].float()  # [batch, d_model]

    def delta(name: str) -> Tensor:
        return steered[name].detach().float() - base[name].detach().float()

    def direct(vec_last: Tensor) -> float:  # [batch, d_model] at the last token · g, mean over prompts
        return float((vec_last * g_final).sum() / n)

    dla: dict[str, list[float]] = {"attn": [], "mlp": []}
    patch: dict[str, list[float]] = {"attn": [], "mlp": []}
    patch_heads: list[list[float]] = []
    heads_dla: list[list[float]] = []
    component_sum = delta("hook_embed")[:, -1]
    for layer in range(L):
        for kind, hook in (("attn", attn_out_hook(layer)), ("mlp", mlp_out_hook(layer))):
            d = delta(hook)
            component_sum = component_sum + d[:, -1]
            dla[kind].append(direct(d[:, -1]))
            g = grads[hook]
            patch[kind].append(0.0 if g is None else float((d * g.float() * mask).sum() / n))
        dz = delta(attn_hook(layer, "hook_z"))  # [batch, pos, heads, d_head]
        per_head_out = torch.einsum("bhd,hde->bhe", dz[:, -1], W_O[layer])
        heads_dla.append([direct(per_head_out[:, h]) for h in range(per_head_out.shape[1])])
        gz = grads[attn_hook(layer, "hook_z")]
        patch_heads.append(
            (((dz * gz.float()) * mask[..., None]).sum((0, 1, 3)) / n).tolist()
            if gz is not None
            else [0.0] * dz.shape[2]
        )
    total = delta(names[-1])[:, -1]
    return SteeringAttribution(
        log_odds_unsteered=float(m_base.detach().mean()),
        log_odds_steered=float(m_steer.mean()),
        linear_estimate=direct(total),
        dla_layers=dla,
        dla_heads=heads_dla,
        dla_direct=direct(total - component_sum),
        dla_embed=direct(delta("hook_embed")[:, -1]),
        patch_layers=patch,
        patch_heads=patch_heads,
        n_prompts=n,
    )


def attribution_figure(
    att: SteeringAttribution, *, title: str = "Where the steer's effect on refusal log-odds goes"
) -> go.Figure:
    """Per-layer bars (direct effect, attribution patching) and per-head heatmaps."""
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "direct effect by layer",
            "attribution patching by layer",
            "direct effect by head",
            "attribution patching by head",
        ),
        vertical_spacing=0.15,
    )
    layers = list(range(len(att.dla_layers["attn"])))
    for col, values in ((1, att.dla_layers), (2, att.patch_layers)):
        for kind, color in (("attn", "#2471a3"), ("mlp", "#c0392b")):
            fig.add_trace(
                go.Bar(x=layers, y=values[kind], name=kind, marker_color=color, legendgroup=kind, showlegend=col == 1),
                1,
                col,
            )
    for col, heads in ((1, att.dla_heads), (2, att.patch_heads)):
        top = max((abs(v) for row in heads for v in row), default=1.0) or 1.0
        fig.add_trace(
            go.Heatmap(z=heads, colorscale="RdBu", reversescale=True, zmin=-top, zmax=top, showscale=col == 2), 2, col
        )
        fig.update_xaxes(title_text="head", row=2, col=col)
        fig.update_yaxes(title_text="layer", row=2, col=col)
    fig.update_layout(
        title=f"{title}: log-odds {att.log_odds_unsteered:+.2f} → {att.log_odds_steered:+.2f} "
        f"(linear estimate {att.linear_estimate:+.2f}, injected-vector direct term {att.dla_direct:+.2f})",
        template="plotly_white",
        barmode="group",
        height=750,
    )
    return fig
