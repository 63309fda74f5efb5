"""``melbo analyze``: every analysis of a run folder, against a refusal-direction run.

Tables go to ``RUN/analysis/*.json`` (and ``*.csv`` for the flat ones), figures to
``RUN/analysis/figures/`` as plotly JSON (read back by the report) and offline HTML. Each step is
written atomically when it finishes; rerunning with the same settings skips finished steps, so
an interrupted analysis resumes.

Vectors from other runs (``compare``) join the comparisons: each vector is compared with the
refusal direction *at its own site* (the difference-in-means candidate the refusal run computed
at that layer and the selected position), vectors at one site with each other, and the
activation changes of all of them at one later hook (the refusal direction's own, when it lies
after every steering site). The costly steps (attribution, mediation, token views) run for the
main run's ``mediate_top`` most refusal-lowering vectors and vector 0 of each compared run.

>>> analyze_run(model, "runs/demo/melbo", against="runs/demo/refusal_direction", compare=["runs/demo/oneshot"])
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from melbo_tl.analysis import ablation, attribution, lens, similarity, token_views
from melbo_tl.analysis.names import (
    ANALYSIS_DIR,
    ATTRIBUTION,
    COSINES,
    DELTA_COSINES,
    EFFECTS,
    FIGURES_DIR,
    LENS,
    MEDIATION,
    READOUT,
    SETTINGS_FILE,
    TOKEN_VIEWS,
    step_file,
)
from melbo_tl.artifacts import atomic_write_json, atomic_write_text, load_run
from melbo_tl.directions.io import load_candidates, load_refusal_direction
from melbo_tl.evaluate.datasets import load_prompts
from melbo_tl.evaluate.refusal import refusal_log_odds
from melbo_tl.runs import check_index, intervention_from_run, n_interventions
from melbo_tl.steering.interventions import AddVector
from melbo_tl.steering.sites import Site, n_layers

SCALES = (-2.0, -1.0, 0.0, 1.0, 2.0)  # multipliers of each mediated vector in the scale sweep


@dataclass
class AnalysisSettings:
    """What an analysis was run with (a rerun with other settings starts afresh)."""

    against: str | None = None
    compare: list[str] = field(default_factory=list)
    prompts: str = "harmful"
    split: str = "test"
    n_prompts: int = 8
    max_new_tokens: int = 32
    mediate_top: int = 1
    top: int | None = None  # only the main run's first ``top`` vectors (its rank order); None: all
    vectors: list[int] | None = None  # these of the main run's vectors (e.g. a triage shortlist); wins over top

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Steer:
    """A named vector from some run: its intervention, its canonical site and the block that site enters."""

    name: str
    intervention: AddVector
    site: Site
    layer: int
    main: bool
    prompts: list[str] = field(default_factory=list)  # the prompts its run was fitted on


def _steers(
    model: Any, run_dirs: Sequence[Path], main: Path, top: int | None = None, vectors: Sequence[int] | None = None
) -> list[Steer]:
    out = []
    for run_dir in run_dirs:
        run = load_run(run_dir, model)
        n = n_interventions(run)
        if run_dir == main and vectors is not None:
            indices = [check_index(i, n, "vector") for i in vectors]
        else:
            indices = list(range(n if run_dir != main or top is None else min(top, n)))
        for i in indices:
            iv = intervention_from_run(run, i)
            if not isinstance(iv, AddVector):
                raise ValueError(f"{run_dir} holds {type(iv).__name__}s; analyze works on steering-vector runs.")
            site = iv.site.canonical()
            out.append(
                Steer(
                    f"{run_dir.name}[{i}]",
                    iv,
                    site,
                    site.layer,
                    run_dir == main,
                    list(run.meta.get("prompts") or []),
                )
            )
    return out


@dataclass
class Refusal:
    """The selected refusal direction and the candidates it came from, for per-site reads."""

    direction: torch.Tensor
    site: Site
    layer: int
    pos: int
    candidates: dict[int, torch.Tensor]

    def at(self, site: Site) -> tuple[torch.Tensor | None, str]:
        """r̂ read at ``site``: the candidate at that layer (selected position), if computed."""
        site = site.canonical()
        if site == self.site:
            return self.direction, f"selected (layer {self.layer}, pos {self.pos})"
        if site.kind == "resid_pre" and site.layer in self.candidates:
            c = self.candidates[site.layer]
            return c / c.norm(), f"diff-in-means candidate (layer {site.layer}, pos {self.pos})"
        return None, f"no candidate at {site}"


def load_refusal(model: Any, run_dir: str | Path) -> Refusal:
    direction, layer, pos = load_refusal_direction(run_dir, model)
    cands: dict[int, torch.Tensor] = {}
    try:
        candidates, _, _ = load_candidates(run_dir)
        if pos in candidates.positions:
            j = candidates.positions.index(pos)
            cands = {layer_: candidates.directions[i, j].float() for i, layer_ in enumerate(candidates.layers)}
    except FileNotFoundError:
        pass
    return Refusal(direction.float(), Site(layer), layer, pos, cands)


class _Writer:
    """Writes one analysis step's outputs, and knows which steps a previous run finished."""

    def __init__(self, out: Path, settings: AnalysisSettings):
        self.out = out
        (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
        path = out / SETTINGS_FILE
        if path.is_file() and json.loads(path.read_text()) != settings.to_dict():
            stale = [
                *out.glob("*.json"),
                *out.glob("*.csv"),
                *(out / FIGURES_DIR).glob("*.json"),
                *(out / FIGURES_DIR).glob("*.html"),
            ]
            for old in stale:
                old.unlink()
        atomic_write_json(path, settings.to_dict())
        js = out / FIGURES_DIR / "plotly.min.js"
        if not js.is_file():
            from plotly.offline import get_plotlyjs

            atomic_write_text(js, get_plotlyjs())

    def done(self, step: str) -> bool:
        return step_file(self.out, step).is_file()

    def table(self, step: str, data: Any, rows: list[dict[str, Any]] | None = None) -> None:
        if rows:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.out / f"{step}.csv", buf.getvalue())
        atomic_write_json(step_file(self.out, step), data)

    def figure(self, name: str, fig: go.Figure) -> None:
        atomic_write_text(self.out / FIGURES_DIR / f"{name}.json", fig.to_json())
        atomic_write_text(
            self.out / FIGURES_DIR / f"{name}.html", fig.to_html(include_plotlyjs="plotly.min.js", full_html=True)
        )


def _effects(model: Any, prompts: list[str], steers: list[Steer]) -> dict[str, Any]:
    base = refusal_log_odds(model, prompts)
    rows = []
    for s in steers:
        lo = refusal_log_odds(model, prompts, [s.intervention])
        rows.append(
            {
                "name": s.name,
                "site": s.site,
                "norm": float(s.intervention.vector.norm()),
                "log_odds": float(lo.mean()),
                "effect": float((lo - base).mean()),
            }
        )
    return {"unsteered_log_odds": float(base.mean()), "rows": rows}


def _similarity(
    steers: list[Steer], refusal: Refusal | None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, go.Figure]]]:
    groups, figs, rows = [], [], []
    for site in sorted({s.site for s in steers}, key=Site.sort_key):
        members = [s for s in steers if s.site == site]
        vectors = {s.name: (s.intervention.vector, s.site) for s in members}
        r_site, source = refusal.at(site) if refusal else (None, "no refusal run")
        if r_site is not None:
            vectors["r̂ @ site"] = (r_site, site)
        sim = similarity.vector_similarity(vectors)
        entry: dict[str, Any] = {**sim.to_dict(), "site": site.hook, "refusal_source": source}
        basis = torch.stack([s.intervention.vector.float() for s in members])
        if r_site is not None and len(members) < basis.shape[1]:
            entry["subspace_overlap_with_r"] = similarity.subspace_overlap(basis, r_site)
        groups.append(entry)
        figs.append((f"cosine_{site.hook}", sim.figure()))
        for i, s in enumerate(members):
            mapped = None
            if refusal is not None:
                mapped = float(
                    torch.nn.functional.cosine_similarity(s.intervention.vector.float(), refusal.direction, dim=0)
                )
            rows.append(
                {
                    "vector": s.name,
                    "site": site.hook,
                    "norm": sim.norms[i],
                    "cos_r_at_site": sim.cosine[i][-1] if r_site is not None else None,
                    "r_source": source,
                    "cos_r_selected_mapped": mapped,
                    "random_q95": sim.random_q95,
                }
            )
    return {"groups": groups}, rows, figs


def _delta_site(model: Any, steers: list[Steer], refusal: Refusal | None) -> Site:
    last_site = max(s.layer for s in steers)
    if refusal is not None and refusal.layer > last_site:
        return refusal.site
    return Site(min(n_layers(model) - 1, last_site + 4))


def analyze_run(
    model: Any,
    run_dir: str | Path,
    *,
    against: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    settings: AnalysisSettings | None = None,
    progress: bool = True,
) -> Path:
    """Run every analysis of ``run_dir`` (see the module docstring); return the analysis folder."""
    run_dir = Path(run_dir)
    settings = replace(
        settings or AnalysisSettings(),
        against=str(against) if against is not None else None,
        compare=[str(c) for c in compare],
    )
    if settings.n_prompts < 1:
        raise ValueError(f"n_prompts must be ≥ 1, got {settings.n_prompts}.")
    if settings.top is not None and settings.top < 1:
        raise ValueError(f"top must be ≥ 1 (or None for every vector), got {settings.top}.")
    if settings.vectors is not None and not settings.vectors:
        raise ValueError("vectors must name at least one vector index (or be None for the first `top`).")
    steers = _steers(model, [run_dir, *[Path(c) for c in compare]], run_dir, settings.top, settings.vectors)
    refusal = load_refusal(model, against) if against is not None else None
    prompts = load_prompts(settings.prompts, split=settings.split, limit=settings.n_prompts)
    run_prompt = (_run_prompts(steers) or [prompts[0]])[0]
    w = _Writer(run_dir / ANALYSIS_DIR, settings)
    at = _delta_site(model, steers, refusal)
    r_at = refusal.at(at)[0] if refusal else None

    @functools.cache
    def chosen() -> list[Steer]:  # needs vector_effects.json, written by the first step
        return _mediated(steers, w, settings.mediate_top)

    def effects() -> None:
        data = _effects(model, prompts, steers)
        w.table(EFFECTS, data, data["rows"])

    def sims() -> None:
        data, rows, figs = _similarity(steers, refusal)
        w.table(COSINES, {**data, "rows": rows}, rows)
        for name, fig in figs:
            w.figure(name.replace(".", "_"), fig)

    def deltas() -> None:
        ds = similarity.delta_similarity(
            model,
            prompts,
            {s.name: s.intervention for s in steers},
            at=at,
            against={"r̂": r_at} if r_at is not None else None,
            n_random=4,
        )
        w.table(DELTA_COSINES, ds.to_dict())
        for key in ds.token_sets:
            cols = ds.names + ds.against
            matrix = [row + extra for row, extra in zip(ds.cosine[key], ds.cosine_against[key])]
            w.figure(
                f"delta_cosine_{key.replace(':', '')}",
                similarity.cosine_heatmap(
                    ds.names,
                    matrix,
                    cols=cols,
                    title=f"Cosines of Δ at {at}, {key} tokens",
                    baseline=ds.random_abs_cos_q95.get(key),
                ),
            )

    def readouts() -> None:
        data = {s.name: lens.vector_readout(model, s.intervention.vector).to_dict() for s in steers}
        if refusal is not None:
            data["r̂ (selected)"] = lens.vector_readout(model, refusal.direction).to_dict()
        w.table(READOUT, data)

    def lenses() -> None:
        data = {}
        for s in steers:
            traj = lens.lens_trajectory(model, run_prompt, s.intervention)
            data[s.name] = traj.to_dict()
            w.figure(f"lens_{s.name}", lens.lens_figure(traj, title=f"Logit lens, {s.name} on {run_prompt!r}"))
        w.table(LENS, {"prompt": run_prompt, "trajectories": data})

    def attributions() -> None:
        data = {}
        for s in chosen():
            att = attribution.steering_attribution(model, prompts, s.intervention)
            data[s.name] = att.to_dict()
            w.figure(f"attribution_{s.name}", attribution.attribution_figure(att, title=f"Attribution, {s.name}"))
        w.table(ATTRIBUTION, data)

    def mediations() -> None:
        assert refusal is not None
        data, rows = {}, []
        base = ablation.baseline_conditions(model, prompts, refusal.direction, max_new_tokens=settings.max_new_tokens)
        for s in chosen():
            med = ablation.mediation(
                model,
                prompts,
                s.intervention,
                refusal.direction,
                site_direction=refusal.at(s.site)[0],
                max_new_tokens=settings.max_new_tokens,
                baseline=base,
                sweep_layers=range(s.layer, n_layers(model)),
                scales=SCALES,
            )
            data[s.name] = med.to_dict()
            rows.append(
                {
                    "vector": s.name,
                    **med.summary,
                    **{f"refusal {k}": (c.refusal or {}).get("rate") for k, c in med.conditions.items() if c.refusal},
                }
            )
            w.figure(f"mediation_{s.name}", ablation.mediation_figure(med, title=f"Mediation, {s.name}"))
            w.figure(f"sweeps_{s.name}", ablation.sweep_figure(med, title=f"Sweeps, {s.name}"))
        w.table(MEDIATION, data, rows)

    def views() -> None:
        data = {}
        for s in chosen():
            tv = token_views.delta_token_view(
                model, run_prompt, s.intervention, at=at, direction=r_at, max_new_tokens=settings.max_new_tokens or 16
            )
            av = token_views.attention_view(model, run_prompt, s.intervention, layer=at.layer)
            data[s.name] = {
                "tokens": tv.to_dict(),
                "attention": av.to_dict(),
                "direction": "r̂" if r_at is not None else "the vector's own direction",
            }
        w.table(TOKEN_VIEWS, data)

    steps: list[tuple[str, Callable[[], None]]] = [
        (EFFECTS, effects),
        (COSINES, sims),
        (DELTA_COSINES, deltas),
        (READOUT, readouts),
        (LENS, lenses),
        (ATTRIBUTION, attributions),
    ]
    if refusal is not None:
        steps.append((MEDIATION, mediations))
    steps.append((TOKEN_VIEWS, views))
    for name, step in tqdm(steps, desc="analyze", disable=not progress):
        if not w.done(name):
            step()
    return w.out


def _run_prompts(steers: list[Steer]) -> list[str]:
    """The main run's training prompts (read with its vectors)."""
    return next((s.prompts for s in steers if s.main), [])


def _mediated(steers: list[Steer], w: _Writer, top: int) -> list[Steer]:
    """The main run's ``top`` most refusal-lowering vectors, and vector 0 of every compared run."""
    effects = {r["name"]: r["effect"] for r in json.loads(step_file(w.out, EFFECTS).read_text())["rows"]}
    main = sorted((s for s in steers if s.main), key=lambda s: effects[s.name])[:top]
    others = [s for s in steers if not s.main and s.name.endswith("[0]")]
    return main + others
