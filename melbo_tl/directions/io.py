"""Refusal directions as run folders, and import from the public ``refusal_direction`` pipeline.

A refusal-direction run folder is an ordinary run folder (:mod:`melbo_tl.artifacts`):
``vectors`` = ``[1, d_model]`` the unit direction r̂, hook ``blocks.ℓ.hook_resid_pre``, method
``"refusal-direction"``, plus the extra tensor ``raw`` (``[d_model]``, the unnormalized difference
in means r; ``run.json`` records its norm as ``raw_norm``). ``melbo generate --run DIR --scale
<raw_norm>`` therefore adds r (induces refusal); ablating r̂ (:class:`AblateDirection`) bypasses it.

Arditi et al.'s pipeline (github.com/andyrdt/refusal_direction) writes ``direction.pt`` (the raw
``[d_model]`` vector, ``torch.save``) and ``direction_metadata.json`` (``{"pos": int, "layer": int}``,
pos a negative offset from the prompt's end); :func:`import_refusal_direction_artifacts` turns
those into the same run-folder format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.artifacts import Run, atomic_write_json, load_run, run_meta, save_run, save_tensors
from melbo_tl.directions.diff_in_means import CandidateDirections
from melbo_tl.directions.scores import CandidateScore, Selection
from melbo_tl.placement import to_result
from melbo_tl.steering.sites import d_model, n_layers, resid_hook

METHOD = "refusal-direction"


def direction_run(raw: Tensor, layer: int, pos: int, **fields: Any) -> Run:
    """A refusal direction as run content: ``vectors`` = r̂ [1, d_model], ``raw`` = r, its hook,
    layer, position and norm, plus ``fields`` (scores, thresholds, …) for run.json."""
    raw = to_result(raw)
    meta = {
        "hooks": [resid_hook(layer)],
        "steer_positions": "all",
        "layer": layer,
        "pos": pos,
        "raw_norm": float(raw.norm()),
        **fields,
    }
    return Run({"vectors": (raw / raw.norm())[None], "raw": raw}, meta)


def _save(model: Any, out_dir: str | Path, run: Run, **head: Any) -> Path:
    fields = {k: v for k, v in run.meta.items() if k != "hooks"}
    meta = run_meta(model, method=METHOD, hooks=run.hooks, **head, **fields)
    return save_run(out_dir, Run(run.tensors, meta))


def save_refusal_direction(
    selection: Selection, model: Any, out_dir: str | Path, *, prompts: dict[str, Any] | None = None, **fields: Any
) -> Path:
    """Write a ``selection`` made by hand (:func:`select_direction`) as a run folder; ``prompts``
    and ``fields`` are recorded in run.json next to the layer, pos, raw norm, baseline and the
    full score table. (``melbo refusal-direction`` trains through ``train_to_folder`` instead,
    which also records the config.)"""
    return _save(model, out_dir, selection_run(selection, **fields), prompts=prompts or {}, status="complete")


def selection_run(selection: Selection, **fields: Any) -> Run:
    """A chosen direction as run content, with its scores, baseline and thresholds."""
    info = selection.to_dict()
    return direction_run(
        selection.raw,
        selection.layer,
        selection.pos,
        baseline=info["baseline"],
        thresholds=info["thresholds"],
        scores=info["scores"],
        seconds_per_candidate=info["seconds_per_candidate"],
        n_harmful_val=selection.n_harmful_val,
        n_harmless_val=selection.n_harmless_val,
        **fields,
    )


def load_refusal_direction(run_dir: str | Path, model: Any | None = None) -> tuple[Float[Tensor, " d_model"], int, int]:
    """``(unit direction [d_model], layer, pos)`` from a refusal-direction run folder (checked
    against ``model`` when given)."""
    run = load_run(run_dir, model)
    if run.meta.get("method") != METHOD:
        raise ValueError(f"{run_dir} holds a {run.meta.get('method')!r} run, not a {METHOD!r} run.")
    for key in ("layer", "pos"):
        if key not in run.meta:
            raise ValueError(f"{run_dir}/run.json has no {key!r}.")
    return run.vector(0), int(run.meta["layer"]), int(run.meta["pos"])


def import_refusal_direction_artifacts(
    direction_pt: str | Path, metadata_json: str | Path, model: Any, out_dir: str | Path
) -> Path:
    """Convert the refusal_direction pipeline's ``direction.pt`` + ``direction_metadata.json`` into a
    run folder for ``model`` at ``out_dir``. Checks the width against the model's d_model and the
    layer against its block count."""
    direction_pt, metadata_json = Path(direction_pt), Path(metadata_json)
    for path in (direction_pt, metadata_json):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist.")
    try:
        raw = torch.load(direction_pt, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{direction_pt} is not a tensor saved with torch.save: {exc}") from None
    if not isinstance(raw, Tensor):
        raise ValueError(f"{direction_pt} holds a {type(raw).__name__}, not a tensor.")
    if raw.ndim == 2 and raw.shape[0] == 1:
        raw = raw[0]
    width = d_model(model)
    if raw.ndim != 1 or raw.shape[0] != width:
        raise ValueError(
            f"{direction_pt} holds a tensor of shape {tuple(raw.shape)}, but the model has d_model = {width}: "
            f"expected [{width}]. Was the direction computed for another model?"
        )
    if not torch.isfinite(raw).all() or not float(raw.norm()) > 0:
        raise ValueError(f"{direction_pt} holds a zero or non-finite vector.")
    try:
        meta = json.loads(metadata_json.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{metadata_json} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool) for k in ("layer", "pos")
    ):
        raise ValueError(f'{metadata_json} must hold {{"pos": int, "layer": int}}, got {meta!r}.')
    layer, pos = meta["layer"], meta["pos"]
    if not 0 <= layer < n_layers(model):
        raise ValueError(
            f"{metadata_json} names layer {layer}, but the model has {n_layers(model)} blocks (valid 0…{n_layers(model) - 1})."
        )
    if pos >= 0:
        raise ValueError(
            f"{metadata_json} names pos {pos}; the pipeline's positions are negative offsets from the prompt's end."
        )
    run = direction_run(raw, layer, pos)
    imported = {"direction": str(direction_pt.resolve()), "metadata": str(metadata_json.resolve())}
    return _save(model, out_dir, run, imported_from=imported, status="complete")


# ---------------------------------------------------------------------------------------------
# Candidates and their scores (what a long selection run checkpoints)
# ---------------------------------------------------------------------------------------------

CANDIDATES_FILE = "candidates.safetensors"
SCORES_FILE = "candidate_scores.json"


def save_candidates(out_dir: str | Path, candidates: CandidateDirections, settings: dict[str, Any]) -> None:
    """Write every candidate (``candidates.safetensors``) and an empty score file recording the
    ``settings`` they were made with (``candidate_scores.json``)."""
    out_dir = Path(out_dir)
    save_tensors(
        out_dir / CANDIDATES_FILE,
        {
            "directions": candidates.directions,
            "harmful_mean": candidates.harmful_mean,
            "harmless_mean": candidates.harmless_mean,
        },
    )
    atomic_write_json(
        out_dir / SCORES_FILE,
        {
            "settings": settings,
            "layers": candidates.layers,
            "positions": candidates.positions,
            "n_harmful": candidates.n_harmful,
            "n_harmless": candidates.n_harmless,
            "scores": [],
        },
    )


def save_scores(out_dir: str | Path, scores: list[CandidateScore], baseline: dict[str, float] | None = None) -> None:
    """Record the candidates scored so far in ``candidate_scores.json`` (atomically)."""
    path = Path(out_dir) / SCORES_FILE
    data = json.loads(path.read_text())
    data["scores"] = [s.to_dict() for s in scores]
    if baseline is not None:
        data["baseline"] = baseline
    atomic_write_json(path, data)


def load_candidates(out_dir: str | Path) -> tuple[CandidateDirections, dict[str, Any], list[CandidateScore]]:
    """``(candidates, settings, scores so far)`` from a folder written by :func:`save_candidates`."""
    out_dir = Path(out_dir)
    tensors_path, scores_path = out_dir / CANDIDATES_FILE, out_dir / SCORES_FILE
    if not tensors_path.is_file() or not scores_path.is_file():
        raise FileNotFoundError(f"{out_dir} has no saved candidates ({CANDIDATES_FILE} and {SCORES_FILE}).")
    tensors = safetensors.torch.load_file(str(tensors_path))
    data = json.loads(scores_path.read_text())
    cands = CandidateDirections(
        tensors["directions"],
        list(data["layers"]),
        list(data["positions"]),
        tensors["harmful_mean"],
        tensors["harmless_mean"],
        int(data["n_harmful"]),
        int(data["n_harmless"]),
    )
    return cands, dict(data["settings"]), [CandidateScore.from_dict(r) for r in data["scores"]]
