"""``melbo report``: one self-contained ``report.html`` per run folder.

Everything a reader needs to judge a run on one page that opens without network: settings,
loss curves, the steered generations with refusal marks, and whatever ``melbo analyze`` wrote
(similarity to the refusal direction with its random baseline, logit-lens readouts, attribution,
mediation, token views). plotly.js and the circuitsvis bundle are inlined once each.

>>> write_report("runs/demo/melbo")  # → runs/demo/melbo/report.html
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import plotly.io as pio

from melbo_tl.analysis import token_views
from melbo_tl.analysis.figures import loss_curves
from melbo_tl.analysis.names import (
    ANALYSIS_DIR,
    COSINES,
    DELTA_COSINES,
    EFFECTS,
    FIGURES_DIR,
    MEDIATION,
    READOUT,
    REPORT_FILE,
    TOKEN_VIEWS,
    step_file,
)
from melbo_tl.artifacts import atomic_write_text, load_run, read_jsonl
from melbo_tl.evaluate.refusal import is_refusal
from melbo_tl.filenames import GENERATIONS_FILE

SECTIONS = (
    "atlas",
    "settings",
    "losses",
    "generations",
    "effects",
    "similarity",
    "lens",
    "attribution",
    "mediation",
    "token-views",
    "dashboards",
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}
th{background:#f3f3f3}td.text{max-width:700px;white-space:pre-wrap}.refuses{background:#fde2e2}.complies{background:#e2f5e4}
nav a{margin-right:1em}.note{color:#666;font-size:.9em}section{margin-top:2.5em}
"""


def _esc(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, *, row_class: Any = None) -> str:
    if not rows:
        return "<p class='note'>(none)</p>"
    cols = list(columns or rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for row in rows:
        cls = f" class='{row_class(row)}'" if row_class else ""
        cells = "".join(
            f"<td class='text'>{_esc(row.get(c, ''))}</td>"
            if isinstance(row.get(c), str) and len(row.get(c, "")) > 60
            else f"<td>{_esc(row.get(c, ''))}</td>"
            for c in cols
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _figure(fig_json: Path) -> str:
    fig = pio.from_json(fig_json.read_text())
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"fig-{fig_json.stem}".replace("[", "-").replace("]", "")
    )


def _figures(folder: Path, prefix: str) -> str:
    return "".join(_figure(p) for p in sorted(folder.glob(f"{prefix}*.json")))


def _load(folder: Path, name: str) -> Any:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(run_dir: Path) -> str:
    return (
        f"<p class='note'>Not analysed yet: run <code>melbo analyze {_esc(run_dir)} --against REFUSAL_RUN</code>.</p>"
    )


def _settings(meta: dict[str, Any]) -> str:
    keep = {k: v for k, v in meta.items() if k not in ("chat_template", "per_vector", "texts", "scores")}
    rows = [
        {"setting": k, "value": json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}
        for k, v in keep.items()
    ]
    return _table(rows)


def _losses(meta: dict[str, Any]) -> str:
    curves = [v.get("losses", []) for v in meta.get("per_vector", []) if isinstance(v, dict)]
    if not any(curves):
        return "<p class='note'>This run recorded no loss curves.</p>"
    title = "MELBO objective per step (maximized)" if meta.get("method", "").startswith("melbo") else "Loss per step"
    fig = loss_curves(curves, title=title)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id="fig-losses")


def _generations(run_dir: Path) -> str:
    path = run_dir / GENERATIONS_FILE
    if not path.is_file():
        return "<p class='note'>No generations.jsonl in this run.</p>"
    rows = [
        {
            "vector": "unsteered" if r["vector"] is None else r["vector"],
            "prompt": r["prompt"],
            "refuses": "yes" if is_refusal(r["completion"]) else "no",
            "completion": r["completion"],
        }
        for r in read_jsonl(path)
    ]
    n_ref = sum(r["refuses"] == "yes" for r in rows)
    note = (
        f"<p class='note'>{n_ref} of {len(rows)} completions contain a refusal phrase (substring judge; red rows).</p>"
    )
    return note + _table(rows, row_class=lambda r: "refuses" if r["refuses"] == "yes" else "complies")


def _similarity(folder: Path) -> str:
    cos = _load(folder, COSINES)
    delta = _load(folder, DELTA_COSINES)
    parts = []
    if cos:
        q95 = cos["rows"][0]["random_q95"] if cos["rows"] else None
        parts.append(
            f"<h3>Vectors vs the refusal direction r̂ at their own site</h3><p class='note'>Two random directions in d_model dimensions exceed |cos| = {_esc(q95)} only 5% of the time.</p>"
        )
        parts.append(_table(cos["rows"]))
        for g in cos["groups"]:
            if "subspace_overlap_with_r" in g:
                o = g["subspace_overlap_with_r"]
                parts.append(
                    f"<p>Share of r̂ inside the span of the {o['rank']} vectors at {_esc(g['site'])}: {o['overlap']:.3f} (random {o['random_mean']:.3f} ± {o['random_std']:.3f}).</p>"
                )
        parts.append(_figures(folder / FIGURES_DIR, "cosine_"))
    if delta:
        rnd = ", ".join(
            f"{k}: {v:.3f} (95%: {delta['random_abs_cos_q95'][k]:.3f})" for k, v in delta["random_abs_cos"].items()
        )
        parts.append(
            f"<h3>Activation changes Δ at {_esc(delta['at'])}</h3><p class='note'>Mean |cos| of random vectors' Δ with these: {rnd}. Over {delta['n_prompts']} prompts.</p>"
        )
        parts.append(_figures(folder / FIGURES_DIR, "delta_cosine_"))
    return "".join(parts) or "<p class='note'>(no similarity tables)</p>"


def _lens(folder: Path) -> str:
    readout = _load(folder, READOUT)
    parts = []
    if readout:
        rows = [
            {
                "vector": name,
                "promoted": " ".join(repr(t) for t, _ in r["promoted"][:8]),
                "suppressed": " ".join(repr(t) for t, _ in r["suppressed"][:8]),
            }
            for name, r in readout.items()
        ]
        parts.append("<h3>Logit readout of each vector</h3>" + _table(rows))
    parts.append(_figures(folder / FIGURES_DIR, "lens_"))
    return "".join(parts)


def _mediation(folder: Path) -> str:
    med = _load(folder, MEDIATION)
    if not med:
        return "<p class='note'>No mediation analysis (needs --against a refusal-direction run).</p>"
    parts = []
    for name, m in med.items():
        rows = [
            {
                "condition": c["name"],
                "refusal log-odds": c["log_odds"],
                "refusal rate": ""
                if not c["refusal"]
                else f"{c['refusal']['rate']:.2f} [{c['refusal']['low']:.2f}, {c['refusal']['high']:.2f}]",
                "example": (c["examples"] or [""])[0],
            }
            for c in m["conditions"].values()
        ]
        s = m["summary"]
        parts.append(
            f"<h3>{_esc(name)}</h3><p>Effect on log-odds {s['effect']:+.2f}; with r̂ ablated {s['effect_with_r_ablated']:+.2f}; "
            f"v with r̂ projected out {s['effect_projected']:+.2f}; r̂-coordinate restored {s['effect_restored']:+.2f} "
            f"(share carried by r̂: {s['fraction_carried_by_r']:.2f}; cos(v, r̂) = {s['cos_v_r']:.3f}).</p>"
            + _table(rows)
        )
        parts.append(
            _figures(folder / FIGURES_DIR, f"mediation_{name}") + _figures(folder / FIGURES_DIR, f"sweeps_{name}")
        )
    return "".join(parts)


def _token_views(folder: Path) -> str:
    views = _load(folder, TOKEN_VIEWS)
    if not views:
        return "<p class='note'>No token views.</p>"
    parts = []
    for name, v in views.items():
        tv = token_views.TokenView.from_dict(v["tokens"])
        av = token_views.AttentionView.from_dict(v["attention"])
        parts.append(
            f"<h3>{_esc(name)}: ‖Δ‖ per token at {_esc(tv.hook)}</h3>"
            + f"<p class='note'>{token_views.sink_note(tv, 'delta_norm')}</p>"
            + token_views.token_view_html(tv, values="delta_norm", bundle=False)
        )
        parts.append(
            f"<h3>{_esc(name)}: projection onto {_esc(v.get('direction', 'r̂'))} per token</h3>"
            + f"<p class='note'>{token_views.sink_note(tv, 'projection')}</p>"
            + token_views.token_view_html(tv, values="projection", bundle=False)
        )
        parts.append(
            f"<h3>{_esc(name)}: attention at layer {av.layer}</h3>" + token_views.attention_view_html(av, bundle=False)
        )
    return "".join(parts)


def _dashboards(folder: Path) -> str:
    """The per-vector dashboards written into ``analysis/`` (see :mod:`melbo_tl.analysis.dashboard`)."""
    from melbo_tl.analysis.dashboard import load_dashboards

    pages = [d.html(bundle=False) for d in load_dashboards(folder.parent)]
    if not pages:
        return "<p class='note'>No vector dashboards: <code>melbo dashboard RUN --vector I</code> writes one.</p>"
    return "".join(pages)


def _atlas(run_dir: Path) -> list[tuple[str, str, str]]:
    """The behaviour atlas section, first on the page, when the run has been triaged."""
    from melbo_tl.analysis.atlas import ATLAS_FIGURE, FRONTIER_FIGURE, cluster_rows, write_atlas
    from melbo_tl.evaluate.triage import BEHAVIOURS_FILE, UNSTEERED, triage_dir

    folder = triage_dir(run_dir)
    if not (folder / BEHAVIOURS_FILE).is_file():
        return []
    if not (folder / f"{ATLAS_FIGURE}.json").is_file():
        write_atlas(run_dir)
    summary = json.loads((folder / BEHAVIOURS_FILE).read_text())
    by_index = {row["index"]: row for row in summary["rows"]}
    shortlist = [
        {
            "read #": n,
            "vector": v,
            "why": "frontier" if by_index[v]["frontier"] else f"cluster {by_index[v]['cluster']}",
            "novelty": round(by_index[v]["novelty"], 3),
            "perplexity": round(by_index[v]["perplexity"], 2),
            "refusal": by_index[v]["refusal"],
            "completion": by_index[v]["completion"][:300],
        }
        for n, v in enumerate(summary["shortlist"])
    ]
    note = (
        f"<p class='note'>{summary['n_vectors']} vectors → {summary['n_behaviours']} behaviour clusters "
        f"({summary['n_degenerate']} degenerate vectors kept apart; embedder {_esc(summary['embedder'])}). "
        f"Unsteered: {_esc(by_index[UNSTEERED]['completion'][:200])}</p>"
    )
    body = (
        note
        + _figure(folder / f"{ATLAS_FIGURE}.json")
        + "<h3>Shortlist: read these first</h3>"
        + _table(shortlist)
        + "<h3>Clusters</h3>"
        + _table(cluster_rows(run_dir))
        + _figure(folder / f"{FRONTIER_FIGURE}.json")
    )
    return [("atlas", "Behaviour atlas", body)]


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{_esc(title)}</h2>{body}</section>"


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the run folder and its ``analysis/`` outputs."""
    from plotly.offline import get_plotlyjs

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    meta = run.meta
    folder = run_dir / ANALYSIS_DIR
    analysed = step_file(folder, EFFECTS).is_file()
    effects = _load(folder, EFFECTS)
    body: list[tuple[str, str, str]] = [
        *_atlas(run_dir),
        ("settings", "Run settings", _settings(meta)),
        ("losses", "Loss curves", _losses(meta)),
        ("generations", "Generations", _generations(run_dir)),
        (
            "effects",
            "Effect on refusal log-odds",
            _table(effects["rows"])
            + f"<p class='note'>Unsteered mean log-odds {effects['unsteered_log_odds']:+.2f}.</p>"
            if effects
            else _missing(run_dir),
        ),
        ("similarity", "Similarity", _similarity(folder) if analysed else _missing(run_dir)),
        ("lens", "Logit lens", _lens(folder) if analysed else _missing(run_dir)),
        (
            "attribution",
            "Attribution",
            _figures(folder / FIGURES_DIR, "attribution_") if analysed else _missing(run_dir),
        ),
        ("mediation", "Mediation by the refusal direction", _mediation(folder) if analysed else _missing(run_dir)),
        ("token-views", "Token views", _token_views(folder) if analysed else _missing(run_dir)),
        ("dashboards", "Vector dashboards", _dashboards(folder)),
    ]
    nav = "".join(f"<a href='#{sid}'>{_esc(title)}</a>" for sid, title, _ in body)
    title = f"melbo_tl report: {run_dir.name} ({meta.get('method', '?')})"
    page = "".join(_iter_page(title, nav, body, get_plotlyjs(), token_views.circuitsvis_bundle_script()))
    out = run_dir / REPORT_FILE
    atomic_write_text(out, page)
    return out


def _iter_page(title: str, nav: str, body: list[tuple[str, str, str]], plotly_js: str, cv_script: str) -> Iterable[str]:
    yield f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_STYLE}</style>"
    yield f"<script type='text/javascript'>{plotly_js}</script>{cv_script}</head><body>"
    yield f"<h1>{_esc(title)}</h1><nav>{nav}</nav>"
    for sid, heading, content in body:
        yield _section(sid, heading, content)
    yield "</body></html>"
