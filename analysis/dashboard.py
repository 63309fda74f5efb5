"""One page per steering vector, as SAE dashboards give for features.

For vector ``i`` of a run: the contexts from the built-in prompt sets that push the site's
activation furthest along it (per-token projection on the unit vector, coloured with
circuitsvis), its steered completions next to the unsteered ones, the logit-lens readout of the
vector, its cosine with a refusal direction r̂ at the same site, and the triggers recovered for
it (:mod:`melbo_tl.triggers`), if a recovery was run. The numbers are a plain dataclass (JSON in
``RUN/analysis/dashboard_<i>.json``), the page is offline HTML (``dashboard_<i>.html``), and a
notebook shows it inline::

    dash = vector_dashboard(model, "runs/planted/dct", 6)
    dash                      # renders in Jupyter
    write_dashboard(dash, "runs/planted/dct")

r̂, unless given, is the difference in means of the site's activation at the last prompt token
between the built-in harmful and harmless prompts read for the contexts (the same forward
passes): the refusal direction's recipe, at this vector's site rather than at a selected layer.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from circuitsvis.tokens import colored_tokens
from torch import Tensor

from melbo_tl.analysis import token_views
from melbo_tl.analysis.lens import vector_readout
from melbo_tl.artifacts import Run, atomic_write_json, atomic_write_text, load_run
from melbo_tl.evaluate.datasets import load_items
from melbo_tl.forward import run_forward
from melbo_tl.generate import generate
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import to_result
from melbo_tl.prompts import prepare_prompts, tokenize
from melbo_tl.runs import check_index, intervention_from_run
from melbo_tl.steering.interventions import AddVector
from melbo_tl.triggers.edits import EditablePrompt

CONTEXT_SETS = ("harmless", "harmful")


@dataclass
class Context:
    """One prompt of a built-in set, read unsteered: ``tokens`` of the user message,
    ``projection`` of the site's activation on the unit vector per token, and its ``peak``."""

    source: str
    prompt: str
    tokens: list[str]
    projection: list[float]
    peak: float


@dataclass
class VectorDashboard:
    """Everything on one vector's page (module docstring). ``refusal_cosine`` is None without r̂;
    ``triggers`` holds the recovered triggers per clean prompt (empty without a recovery)."""

    run: str
    index: int
    site: str
    norm: float
    d_model: int
    contexts: list[Context]
    n_contexts_read: int
    completions: list[dict[str, str]]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    refusal_cosine: float | None
    refusal_source: str
    triggers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VectorDashboard:
        fields = {**data, "contexts": [Context(**c) for c in data["contexts"]]}
        fields["promoted"] = [tuple(x) for x in data["promoted"]]
        fields["suppressed"] = [tuple(x) for x in data["suppressed"]]
        return cls(**fields)

    def html(self, *, bundle: bool = True) -> str:
        return dashboard_html(self, bundle=bundle)

    def _repr_html_(self) -> str:
        return self.html()


def _message_columns(model: Any, prompts: list[str]) -> tuple[Any, list[tuple[int, int]]]:
    """The chat-formatted batch and, per (left-padded) row, the columns of the user message."""
    batch = tokenize(chat_tokenizer(model), prepare_prompts(model, prompts))
    width = batch.input_ids.shape[1]
    spans = []
    for row, prompt in enumerate(prompts):
        pieces = EditablePrompt.from_text(model, prompt)
        start = width - int(batch.lengths[row]) + len(pieces.prefix)
        spans.append((start, min(start + len(pieces.content), width)))
    return batch, spans


@torch.no_grad()
def top_contexts(
    model: Any, vector: Tensor, site: str, *, sets: tuple[str, ...] = CONTEXT_SETS, n_per_set: int = 48,
    top: int = 8, batch_size: int = 16,
) -> tuple[list[Context], Tensor | None, int]:  # fmt: skip
    """The ``top`` prompts of ``sets`` whose user-message tokens project furthest on ``vector``
    at ``site`` (unsteered), and the harmful-minus-harmless mean at the last prompt token (r̂
    before normalising; None unless both sets are read)."""
    unit = vector.detach().float().cpu() / vector.float().norm().clamp_min(1e-8)
    tok = chat_tokenizer(model)
    contexts: list[Context] = []
    last: dict[str, list[Tensor]] = {}
    for name in sets:
        prompts = [item["prompt"] for item in load_items(name)][:n_per_set]
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            batch, spans = _message_columns(model, chunk)
            acts = to_result(run_forward(model, batch, record=[site], logits="none").activations[site].float())
            last.setdefault(name, []).append(acts[:, -1])
            proj = acts @ unit
            for row, (a, b) in enumerate(spans):
                ids = batch.input_ids[row, a:b].tolist()
                values = proj[row, a:b].tolist()
                if values:
                    contexts.append(Context(name, chunk[row], [tok.decode([i]) for i in ids], values, max(values)))
    contexts.sort(key=lambda c: -c.peak)
    diff = None
    if "harmful" in last and "harmless" in last:
        diff = torch.cat(last["harmful"]).mean(0) - torch.cat(last["harmless"]).mean(0)
    return contexts[:top], diff, sum(x.shape[0] for rows in last.values() for x in rows)


def _trigger_rows(run_dir: Path | None, index: int, top: int) -> list[dict[str, Any]]:
    if run_dir is None:
        return []
    from melbo_tl.triggers.recovery import load_recovery

    rec = load_recovery(run_dir, index)
    if rec is None:
        return []
    keep = ("text", "edit", "verified", "similarity", "completion")
    return [{"prompt": p.prompt, **{k: t.get(k) for k in keep}} for p in rec.prompts for t in p.triggers[:top]]


def vector_dashboard(
    model: Any,
    run: str | Path | Run,
    index: int,
    *,
    prompts: list[str] | None = None,
    refusal: Tensor | None = None,
    n_per_set: int = 48,
    top: int = 8,
    scale: float = 1.0,
    max_new_tokens: int = 40,
) -> VectorDashboard:
    """The dashboard of vector ``index`` (module docstring). ``prompts``: clean prompts for the
    steered completions (default: the run's own); ``refusal``: r̂ at the vector's site (default:
    the difference in means described above)."""
    loaded = run if isinstance(run, Run) else load_run(run, model)
    check_index(index, loaded.vectors.shape[0], "vector")
    steer = intervention_from_run(loaded, index, scale=scale)
    if not isinstance(steer, AddVector) or steer.vector.ndim != 1:
        raise ValueError(f"A dashboard needs a steering vector; entry {index} is a {type(steer).__name__}.")
    vector = (steer.vector * steer.scale).detach().float().cpu()
    contexts, diff, n_read = top_contexts(model, vector, steer.hook, n_per_set=n_per_set, top=top)
    chosen = list(prompts or loaded.meta.get("prompts") or [])[:4] or ["Tell me about yourself."]
    done = generate(model, chosen * 2, _rows(steer, len(chosen)), max_new_tokens=max_new_tokens)
    completions = [
        {"prompt": p, "steered": s.text, "unsteered": u.text}
        for p, s, u in zip(chosen, done[: len(chosen)], done[len(chosen) :])
    ]
    readout = vector_readout(model, vector, top_k=10)
    r_hat, source = (
        (refusal, "given") if refusal is not None else (diff, f"diff-in-means at {steer.hook}, last prompt token")
    )
    cosine = None if r_hat is None else float(torch.nn.functional.cosine_similarity(vector, r_hat.float().cpu(), dim=0))
    run_dir = None if isinstance(run, Run) else Path(run)
    return VectorDashboard(
        run=str(run_dir or "(in memory)"), index=index, site=steer.hook, norm=float(vector.norm()), d_model=vector.shape[0], contexts=contexts,
        n_contexts_read=n_read, completions=completions, promoted=readout.promoted, suppressed=readout.suppressed,
        refusal_cosine=cosine, refusal_source=source if r_hat is not None else "none", triggers=_trigger_rows(run_dir, index, 5),
    )  # fmt: skip


def _rows(steer: AddVector, n: int) -> AddVector:
    """The first ``n`` rows steered, the next ``n`` not: steered and unsteered in one generate."""
    v = steer.vector * steer.scale
    return AddVector(torch.stack([v] * n + [torch.zeros_like(v)] * n), steer.hook, steer.positions, 1.0)


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_esc(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def dashboard_html(d: VectorDashboard, *, bundle: bool = True) -> str:
    """The page's body as offline HTML (circuitsvis inlined once with ``bundle``)."""
    parts = [token_views.circuitsvis_bundle_script()] if bundle else []
    cos = "–" if d.refusal_cosine is None else f"{d.refusal_cosine:+.3f}"
    parts.append(
        f"<h2>Vector {d.index} of {_esc(d.run)}</h2><p>site <code>{_esc(d.site)}</code>, ‖v‖ = {d.norm:.2f}, "
        f"cosine with r̂ = {cos} ({_esc(d.refusal_source)}; 95% of random directions lie within "
        f"±{1.96 / math.sqrt(d.d_model):.3f})</p>"
    )
    parts.append(f"<h3>Top-activating contexts ({d.n_contexts_read} built-in prompts read, unsteered)</h3>")
    for c in d.contexts:
        low, high = token_views.colour_range(c.projection, skip_first=False)
        view = colored_tokens(token_views._shown(c.tokens), c.projection, min_value=low, max_value=high)
        parts.append(
            f"<p>{_esc(c.source)} · peak projection {c.peak:+.2f}</p>" + token_views._offline(view, bundle=False)
        )
    parts.append("<h3>Steered completions</h3>" + _table(d.completions))
    promoted = ", ".join(f"{_esc(repr(t))} {v:+.1f}" for t, v in d.promoted)
    suppressed = ", ".join(f"{_esc(repr(t))} {v:+.1f}" for t, v in d.suppressed)
    parts.append(f"<h3>Logit lens of the vector</h3><p>promoted: {promoted}</p><p>suppressed: {suppressed}</p>")
    parts.append("<h3>Recovered triggers</h3>" + (_table(d.triggers) if d.triggers else "<p>No recovery in the run folder: "
                 f"<code>melbo recover-trigger {_esc(d.run)} --vector {d.index}</code></p>"))  # fmt: skip
    return "".join(parts)


def write_dashboard(d: VectorDashboard, run_dir: str | Path) -> Path:
    """``RUN/analysis/dashboard_<i>.json`` and a standalone ``dashboard_<i>.html``; returns the page."""
    folder = Path(run_dir) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"dashboard_{d.index}.json", d.to_dict())
    page = folder / f"dashboard_{d.index}.html"
    atomic_write_text(page, token_views.standalone_page(f"Vector {d.index} dashboard", d.html()))
    return page


def load_dashboards(run_dir: str | Path) -> list[VectorDashboard]:
    """The dashboards written into ``RUN/analysis/``, by vector index."""
    found = sorted((Path(run_dir) / "analysis").glob("dashboard_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    return [VectorDashboard.from_dict(json.loads(p.read_text())) for p in found]
