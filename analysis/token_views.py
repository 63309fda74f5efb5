"""Per-token views of a steering intervention, rendered with circuitsvis as offline HTML.

A steering vector's effect is easiest to judge token by token: where in the prompt and the
steered completion does the residual stream move (‖Δ‖), and how far along the steering direction
does it sit (projection)? Attention views show whether steering re-routes attention. The numbers
are plain dataclasses (JSON round-trip via ``to_dict``/``from_dict``) so reports can be rebuilt
without the model.

The HTML never touches a CDN: ``str()`` of a circuitsvis render loads its JavaScript from
unpkg.com, so only ``.local_src`` (bundle inlined) is used. A page holding many views can inline
the 1.3 MB bundle once with :func:`circuitsvis_bundle_script` and render each view with
``bundle=False``. Three fixes are applied to circuitsvis's output: its ``<div …/>`` is closed
(HTML has no self-closing div, so the next view would be nested inside it and wiped when React
renders); tokens are HTML-escaped (circuitsvis sets them as innerHTML, so a generated ``<b>`` would
be markup, not text; only its hover tooltip then shows the escaped form); and ``<`` inside the
props is escaped so that no token can close the ``<script>``.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import circuitsvis
import torch
from circuitsvis.attention import attention_patterns
from circuitsvis.tokens import colored_tokens
from jaxtyping import Float
from torch import Tensor

from melbo_tl.forward import run_forward
from melbo_tl.generate import generate
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import to_result
from melbo_tl.prompts import left_pad, prepare_prompts, tokenize
from melbo_tl.steering.interventions import AddVector, Intervention
from melbo_tl.steering.sites import SiteLike, attn_hook, check_hook, check_layer, d_model, hook_of

TOKEN_VALUES = ("delta_norm", "projection")
_BUNDLE_FILE = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
_SELF_CLOSED_DIV = re.compile(r'<div (id="circuits-vis-[^"]*"[^>]*?)\s*/>')
_END = "</script>"


@dataclass
class TokenView:
    """Per-token effect of a steer on one prompt and its steered completion.

    Fields:
        tokens: the formatted prompt followed by the steered completion, one decoded string per token.
        n_prompt_tokens: how many leading entries of ``tokens`` are prompt; the rest were generated.
        delta_norm: per token, ‖steered − unsteered‖ of the activation at ``hook``.
        projection: per token, the steered activation at ``hook`` dotted with the unit direction.
        completion: the decoded steered completion (greedy, special tokens removed).
        hook: the legacy hook name the activations were read at, e.g. ``blocks.6.hook_resid_pre``.
    """

    tokens: list[str]
    n_prompt_tokens: int
    delta_norm: list[float]
    projection: list[float]
    completion: str
    hook: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenView:
        return cls(
            tokens=[str(t) for t in data["tokens"]],
            n_prompt_tokens=int(data["n_prompt_tokens"]),
            delta_norm=[float(x) for x in data["delta_norm"]],
            projection=[float(x) for x in data["projection"]],
            completion=str(data["completion"]),
            hook=str(data["hook"]),
        )


@dataclass
class AttentionView:
    """Attention patterns of one layer on a prompt, without and with a steer.

    Fields:
        tokens: the formatted prompt, one decoded string per token.
        layer: the block whose ``attn.hook_pattern`` was read.
        unsteered: ``[heads, q, k]`` attention probabilities (rows sum to 1), no intervention.
        steered: ``[heads, q, k]`` the same, with the steer applied.
    """

    tokens: list[str]
    layer: int
    unsteered: Float[Tensor, "heads q k"]
    steered: Float[Tensor, "heads q k"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "layer": self.layer,
            "unsteered": self.unsteered.tolist(),
            "steered": self.steered.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionView:
        return cls(
            tokens=[str(t) for t in data["tokens"]],
            layer=int(data["layer"]),
            unsteered=torch.tensor(data["unsteered"], dtype=torch.float32, device="cpu"),
            steered=torch.tensor(data["steered"], dtype=torch.float32, device="cpu"),
        )


def _prompt_ids(model: Any, prompt: str, chat: bool) -> tuple[str, list[int]]:
    """The formatted prompt text and its token ids (exactly as ``generate`` tokenizes it)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt {prompt!r} is empty; give the non-empty text of a user message.")
    [text] = prepare_prompts(model, [prompt], chat=chat)
    return text, tokenize(chat_tokenizer(model), [text]).input_ids[0].tolist()


def _unit_direction(model: Any, steer: Intervention, direction: Tensor | None) -> Float[Tensor, " d_model"]:
    if direction is None:
        if not isinstance(steer, AddVector) or steer.vector.ndim != 1:
            raise ValueError(
                f"direction is required for a {type(steer).__name__}"
                + ("" if not isinstance(steer, AddVector) else f" with a {tuple(steer.vector.shape)} vector")
                + "; it defaults only for an AddVector with one [d_model] vector."
            )
        direction = steer.vector
    direction = direction.detach().float().cpu()
    if direction.shape != (d_model(model),):
        raise ValueError(f"direction has shape {tuple(direction.shape)}; expected ({d_model(model)},) = [d_model].")
    norm = direction.norm()
    if norm == 0:
        raise ValueError("direction is the zero vector, which has no direction; pass a non-zero direction=.")
    return direction / norm


@torch.no_grad()
def _acts(model: Any, ids: list[int], n_prompt: int, name: str, steer: Intervention | None) -> Tensor:
    """Activation at hook ``name`` for one unpadded sequence, [pos, …], optionally steered (the
    first ``n_prompt`` tokens are prompt, the rest completion)."""
    batch = left_pad([ids], 0)
    fwd = run_forward(model, batch, [steer] if steer is not None else [], record=[name], logits="none",
                      prompt_lengths=torch.tensor([n_prompt], device="cpu"))  # fmt: skip
    return to_result(fwd.activations[name][0])


def delta_token_view(
    model: Any,
    prompt: str,
    steer: Intervention,
    *,
    at: SiteLike,
    direction: Float[Tensor, " d_model"] | None = None,
    max_new_tokens: int = 32,
    chat: bool = True,
) -> TokenView:
    """Generate the steered completion greedily, then compare steered and unsteered activations
    at hook ``at`` on every token of prompt + completion. ``direction`` defaults to the steer's own
    vector (an :class:`AddVector` with a ``[d_model]`` vector; its direction ignores ``scale``)."""
    at = check_hook(model, hook_of(at))
    unit = _unit_direction(model, steer, direction)
    text, prompt_ids = _prompt_ids(model, prompt, chat)
    tok = chat_tokenizer(model)
    [done] = generate(model, [text], steer, max_new_tokens=max_new_tokens, chat=False)
    ids, n = prompt_ids + done.token_ids, len(prompt_ids)
    base = _acts(model, ids, n, at, None)
    steered = _acts(model, ids, n, at, steer)
    return TokenView(
        tokens=[tok.decode([i]) for i in ids],
        n_prompt_tokens=n,
        delta_norm=(steered - base).norm(dim=-1).tolist(),
        projection=(steered @ unit).tolist(),
        completion=done.text,
        hook=at,
    )


def attention_view(model: Any, prompt: str, steer: Intervention, *, layer: int, chat: bool = True) -> AttentionView:
    """Layer ``layer``'s attention patterns on the (formatted) prompt, unsteered and steered."""
    check_layer(model, layer)
    name = check_hook(model, attn_hook(layer, "hook_pattern"))
    _, ids = _prompt_ids(model, prompt, chat)
    tok = chat_tokenizer(model)
    return AttentionView(
        tokens=[tok.decode([i]) for i in ids],
        layer=layer,
        unsteered=_acts(model, ids, len(ids), name, None),
        steered=_acts(model, ids, len(ids), name, steer),
    )


@functools.lru_cache(maxsize=1)
def _bundle_js() -> str:
    """circuitsvis's iife bundle exactly as ``render_local`` inlines it (closing script tags removed)."""
    return _BUNDLE_FILE.read_text(encoding="utf-8").replace(_END, "")


def circuitsvis_bundle_script() -> str:
    """One classic ``<script>`` defining the global ``CircuitsVis``; put it once on a page whose
    views were rendered with ``bundle=False`` (their module scripts run after it, and see it)."""
    return f"<script>\n{_bundle_js()}\n{_END}\n"


def _offline(rendered: Any, *, bundle: bool) -> str:
    """Fix circuitsvis's local HTML (close the div, escape ``<`` in props), optionally drop the bundle."""
    src = _SELF_CLOSED_DIV.sub(r"<div \1></div>", rendered.local_src, count=1)
    js = _bundle_js()
    if js not in src or not src.rstrip().endswith(_END):
        raise RuntimeError(f"circuitsvis {circuitsvis.__version__} renders HTML this module does not recognise.")
    head, tail = src.split(js, 1)
    call = tail.rstrip()[: -len(_END)].replace("<", "\\u003c")  # only JSON strings hold '<'
    return head + (js if bundle else "") + call + _END + "\n"


def _shown(tokens: list[str]) -> list[str]:
    """Tokens as circuitsvis must receive them: it inserts each one as HTML."""
    return [html.escape(t, quote=False) for t in tokens]


def colour_range(values: list[float], *, skip_first: bool) -> tuple[float, float]:
    """The colour scale's (min, max): symmetric around 0 over the tokens shown on it. With
    ``skip_first`` the first token (the attention sink, ``<|im_start|>``, whose residual norm dwarfs
    every other) is left off the scale, so the others are not all drawn blank."""
    shown = values[1:] if skip_first and len(values) > 1 else values
    top = max((abs(v) for v in shown), default=0.0) or 1.0
    return -top, top


def token_view_html(view: TokenView, *, values: str = "delta_norm", bundle: bool = True, skip_sink: bool = True) -> str:
    """Tokens coloured by ``values`` (``delta_norm`` or ``projection``); offline HTML fragment.

    With ``skip_sink`` the colour scale is set by every token but the first (see
    :func:`colour_range`; the first token's own value is given by :func:`sink_note`)."""
    if values not in TOKEN_VALUES:
        raise ValueError(f"values {values!r} is not one of {TOKEN_VALUES}.")
    data = list(getattr(view, values))
    low, high = colour_range(data, skip_first=skip_sink)
    if values == "delta_norm":
        low = 0.0
    return _offline(colored_tokens(_shown(view.tokens), data, min_value=low, max_value=high), bundle=bundle)


def sink_note(view: TokenView, values: str) -> str:
    """A line giving the first token's value, which the colour scale leaves out."""
    data = getattr(view, values)
    if not data:
        return ""
    token = html.escape(view.tokens[0])
    return f"first token {token!r} (attention sink, off the colour scale): {data[0]:+.3g}; scale ±{colour_range(list(data), skip_first=True)[1]:.3g}"


def attention_view_html(view: AttentionView, *, bundle: bool = True) -> str:
    """Two headed sections, unsteered then steered patterns. With ``bundle=True`` the bundle is
    inlined once (as :func:`circuitsvis_bundle_script`) for both."""
    parts = [circuitsvis_bundle_script()] if bundle else []
    for label, pattern in (("unsteered", view.unsteered), ("steered", view.steered)):
        parts.append(f"<section><h3>Layer {view.layer} attention, {label}</h3>\n")
        parts.append(_offline(attention_patterns(_shown(view.tokens), pattern), bundle=False) + "</section>\n")
    return "".join(parts)


def standalone_page(title: str, body_html: str) -> str:
    """A complete HTML document: ``title`` (escaped) as <title> and <h1>, then ``body_html`` as is."""
    t = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t}</title>\n</head>\n'
        f"<body>\n<h1>{t}</h1>\n{body_html}\n</body>\n</html>\n"
    )
