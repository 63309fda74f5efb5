"""``melbo analyze``: every analysis of a run folder, against a refusal-direction run.

The steps are :data:`melbo_tl.analysis.analysis_steps.STEPS`, run by one loop. Tables go to
``RUN/analysis/*.json`` (and ``*.csv`` for the flat ones), figures to ``RUN/analysis/figures/``
as plotly JSON (read back by the report) and offline HTML. Each step is written atomically when
it finishes; rerunning with the same settings skips finished steps, so an interrupted analysis
resumes; other settings start the folder afresh (:class:`~melbo_tl.stage_folder.StageFolder`).

Vectors from other runs (``compare``) join the comparisons: each vector is compared with the
refusal direction *at its own site* (the difference-in-means candidate the refusal run computed
at that layer and the selected position), vectors at one site with each other, and the
activation changes of all of them at one later hook (the refusal direction's own, when it lies
after every steering site). The costly steps (attribution, mediation, token views) run for the
main run's ``mediate_top`` most refusal-lowering vectors and vector 0 of each compared run.

>>> analyze_run(model, "runs/demo/melbo", against="runs/demo/refusal_direction", compare=["runs/demo/oneshot"])
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from melbo_tl.analysis.analysis_steps import STEPS
from melbo_tl.analysis.names import ANALYSIS_DIR, EFFECTS, FIGURES_DIR, step_file
from melbo_tl.artifacts import atomic_write_text, load_run
from melbo_tl.directions.io import load_candidates, load_refusal_direction
from melbo_tl.evaluate.datasets import load_prompts
from melbo_tl.runs import check_index, intervention_from_run, n_interventions
from melbo_tl.stage_folder import StageFolder
from melbo_tl.steering.interventions import AddVector
from melbo_tl.steering.sites import Site, n_layers

# What other settings would have made differently (the figures' plotly.min.js stays).
STALE = ("*.json", "*.csv", f"{FIGURES_DIR}/*.json", f"{FIGURES_DIR}/*.html")


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


class AnalysisFolder(StageFolder):
    """``RUN/analysis/``: a step's table as ``<step>.json`` (and ``.csv`` when flat), its figures as
    plotly JSON and offline HTML under ``figures/``; other settings start it afresh."""

    def __init__(self, path: Path, settings: AnalysisSettings) -> None:
        super().__init__(path, settings.to_dict(), stale=STALE)
        (self.path / FIGURES_DIR).mkdir(exist_ok=True)
        js = self.path / FIGURES_DIR / "plotly.min.js"
        if not js.is_file():
            from plotly.offline import get_plotlyjs

            atomic_write_text(js, get_plotlyjs())

    def done(self, step: str) -> bool:
        return step_file(self.path, step).is_file()

    def table(self, step: str, data: Any, rows: list[dict[str, Any]] | None = None) -> None:
        if rows:
            self.write_csv(f"{step}.csv", rows)
        self.write_json(f"{step}.json", data)

    def figure(self, name: str, fig: go.Figure) -> None:
        self.write_text(f"{FIGURES_DIR}/{name}.json", fig.to_json())
        self.write_text(f"{FIGURES_DIR}/{name}.html", fig.to_html(include_plotlyjs="plotly.min.js", full_html=True))


@dataclass
class Context:
    """What every analysis step reads: the model, the settings, the vectors (``steers``), the
    refusal direction (or None), the held-out ``prompts``, the main run's training prompt
    (``run_prompt``), the site ``at`` where changes are compared (and r̂ read there, ``r_at``),
    and the folder the step writes to."""

    model: Any
    settings: AnalysisSettings
    steers: list[Steer]
    refusal: Refusal | None
    prompts: list[str]
    run_prompt: str
    at: Site
    r_at: torch.Tensor | None
    out: AnalysisFolder

    @functools.cached_property
    def chosen(self) -> list[Steer]:
        """The main run's ``mediate_top`` most refusal-lowering vectors (from the effects step's
        table, so it runs first) and vector 0 of every compared run: the costly steps' vectors."""
        effects = {r["name"]: r["effect"] for r in json.loads(step_file(self.out.path, EFFECTS).read_text())["rows"]}
        main = sorted((s for s in self.steers if s.main), key=lambda s: effects[s.name])[: self.settings.mediate_top]
        return main + [s for s in self.steers if not s.main and s.name.endswith("[0]")]


def _check(settings: AnalysisSettings) -> None:
    if settings.n_prompts < 1:
        raise ValueError(f"n_prompts must be ≥ 1, got {settings.n_prompts}.")
    if settings.top is not None and settings.top < 1:
        raise ValueError(f"top must be ≥ 1 (or None for every vector), got {settings.top}.")
    if settings.vectors is not None and not settings.vectors:
        raise ValueError("vectors must name at least one vector index (or be None for the first `top`).")


def _delta_site(model: Any, steers: list[Steer], refusal: Refusal | None) -> Site:
    """The refusal direction's own site when it lies after every steering site; else 4 blocks on."""
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
    """Run every analysis step of ``run_dir`` not finished yet (see the module docstring); return
    the analysis folder."""
    run_dir = Path(run_dir)
    settings = replace(
        settings or AnalysisSettings(),
        against=str(against) if against is not None else None,
        compare=[str(c) for c in compare],
    )
    _check(settings)
    steers = _steers(model, [run_dir, *[Path(c) for c in compare]], run_dir, settings.top, settings.vectors)
    refusal = load_refusal(model, against) if against is not None else None
    prompts = load_prompts(settings.prompts, split=settings.split, limit=settings.n_prompts)
    at = _delta_site(model, steers, refusal)
    ctx = Context(
        model=model, settings=settings, steers=steers, refusal=refusal, prompts=list(prompts),
        run_prompt=(next((s.prompts for s in steers if s.main), []) or [prompts[0]])[0], at=at,
        r_at=refusal.at(at)[0] if refusal else None, out=AnalysisFolder(run_dir / ANALYSIS_DIR, settings),
    )  # fmt: skip
    steps = [step for step in STEPS if refusal is not None or not step.needs_refusal]
    for step in tqdm(steps, desc="analyze", disable=not progress):
        if not ctx.out.done(step.name):
            step.run(ctx)
    return ctx.out.path
