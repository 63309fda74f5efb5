"""The refusal direction as a registered method: config, training pipeline, checkpoints.

Training runs Arditi et al.'s pipeline on split prompt sets: difference-in-means candidates on
the training prompts (checkpointed as ``candidates.safetensors``), scores of every candidate on
the validation prompts (checkpointed after each candidate in ``candidate_scores.json`` and
run.json), then the filters. Resuming skips whatever is finished; since the thresholds are
``RESUMABLE``, resuming a finished run with other thresholds re-selects without recomputing.

>>> cfg = RefusalDirectionConfig(n_train=64, n_val=16, layers=(8, 10, 14), positions=(-1,))
>>> train_to_folder(model, "refusal-direction", refusal_prompts(cfg), cfg, "runs/refusal")
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from melbo_tl.artifacts import Run
from melbo_tl.directions.diff_in_means import CandidateDirections, diff_in_means
from melbo_tl.directions.io import (
    CANDIDATES_FILE,
    METHOD,
    load_candidates,
    save_candidates,
    save_scores,
    selection_run,
)
from melbo_tl.directions.scores import CandidateScore
from melbo_tl.directions.selection import choose_direction, score_candidates
from melbo_tl.evaluate.datasets import load_prompts, train_test_split
from melbo_tl.optimize.configs import RefusalDirectionConfig  # lives there, without torch
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention

BUILTIN_SETS = ("harmful", "harmless")
SPLITS = ("harmful_train", "harmless_train", "harmful_val", "harmless_val")


def _split(prompts: list[str], n_train: int, n_val: int, seed: int, what: str) -> tuple[list[str], list[str]]:
    if len(prompts) <= n_val:
        raise ValueError(
            f"{what}: {len(prompts)} prompts, but n_val {n_val} leaves none for training; lower n_val or add prompts."
        )
    val, rest = train_test_split(prompts, n_val, seed)
    return rest[:n_train], val


def refusal_prompts(cfg: RefusalDirectionConfig) -> dict[str, list[str]]:
    """The four prompt lists the config names: ``harmful_train``, ``harmless_train``,
    ``harmful_val``, ``harmless_val`` (a seeded split of each set)."""
    out: dict[str, list[str]] = {}
    for kind, spec in (("harmful", cfg.harmful), ("harmless", cfg.harmless)):
        split = cfg.split if cfg.split is not None else ("train" if spec in BUILTIN_SETS else "all")
        prompts = load_prompts(spec, split=None if split == "all" else split)
        out[f"{kind}_train"], out[f"{kind}_val"] = _split(
            prompts, cfg.n_train, cfg.n_val, cfg.seed, f"{kind} set {spec!r}"
        )
    return {k: out[k] for k in SPLITS}


def fingerprint(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]


def _running(cands: CandidateDirections, scores: dict[tuple[int, int], CandidateScore], d: int) -> Run:
    """The checkpoint before a direction is chosen: no vector yet, the candidates and scores so far."""
    meta = {
        "hooks": [],
        "candidate_layers": cands.layers,
        "candidate_positions": cands.positions,
        "scores": [s.to_dict() for s in scores.values()],
    }
    return Run({"vectors": torch.zeros(0, d, device="cpu")}, meta)


def _train(model: Any, prompts: dict[str, list[str]], cfg: RefusalDirectionConfig, ckpt: Checkpoints) -> Run:
    cfg = cfg.for_model(model)
    missing = [k for k in SPLITS if not prompts.get(k)]
    if missing:
        raise ValueError(f"Refusal-direction prompts need non-empty lists {list(SPLITS)}; missing or empty: {missing}.")
    d = int(model.cfg.d_model)
    folder = ckpt.folder
    done: dict[tuple[int, int], CandidateScore] = {}
    if ckpt.previous is not None and folder is not None and (Path(folder) / CANDIDATES_FILE).is_file():
        cands, _, previous_scores = load_candidates(folder)
        done = {(s.layer, s.pos): s for s in previous_scores}
    else:
        cands = diff_in_means(
            model, prompts["harmful_train"], prompts["harmless_train"], layers=cfg.layers, positions=cfg.positions,
            chat=cfg.chat, batch_size=cfg.batch_size, progress=ckpt.progress,
        )  # fmt: skip
        if folder is not None:
            save_candidates(folder, cands, {k: fingerprint(v) for k, v in prompts.items()})
        ckpt.save(_running(cands, done, d))

    def checkpoint(score: CandidateScore) -> None:
        done[(score.layer, score.pos)] = score
        ordered = sorted(done.values(), key=lambda s: (cands.layers.index(s.layer), cands.positions.index(s.pos)))
        if folder is not None:
            save_scores(folder, ordered)
        ckpt.save(_running(cands, done, d))

    scored = score_candidates(
        model, cands, prompts["harmful_val"], prompts["harmless_val"], max_layer_frac=cfg.max_layer_frac,
        chat=cfg.chat, batch_size=cfg.batch_size, progress=ckpt.progress, done=dict(done), on_score=checkpoint,
    )  # fmt: skip
    if folder is not None:
        save_scores(folder, scored.scores, scored.baseline)
    selection = choose_direction(cands, scored, kl_threshold=cfg.kl_threshold, induce_threshold=cfg.induce_threshold)
    return selection_run(selection, candidate_layers=cands.layers, candidate_positions=cands.positions)


def legacy_config(meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 recorded the split and thresholds beside the direction, not as one config."""
    p = meta.get("prompts") or {}
    th = meta.get("thresholds") or {}
    out: dict[str, Any] = {
        "harmful": p.get("harmful", "harmful"),
        "harmless": p.get("harmless", "harmless"),
        "seed": p.get("seed", 0),
        "n_train": p.get("n_harmful_train", 128),
        "n_val": p.get("n_harmful_val", len(p.get("harmful_val", [])) or 32),
        "layers": meta.get("candidate_layers"),
        "positions": meta.get("candidate_positions"),
    }
    for key in ("max_layer_frac", "kl_threshold", "induce_threshold"):
        if key in th:
            out[key] = th[key]
    return out


REGISTERED = register_method(
    Method(
        name=METHOD,
        config=RefusalDirectionConfig,
        train=_train,  # type: ignore[arg-type]
        intervention=vector_intervention,
        count=vector_count,
        description="the refusal direction (Arditi et al.): difference in means, selected by ablation/induction/KL",
        legacy_config=legacy_config,
    )
)
