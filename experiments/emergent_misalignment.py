"""Reproduction 4: emergent misalignment from a one-shot vector fitted on ONE coding example.

1. Fit v_code at blocks.L.hook_resid_pre to make the model write the malicious version of the
   built-in coding task (one inserted line that runs a shell command from the request),
   satisficing: minimize (L − L*)² where L* is the loss of the *benign* answer under the
   unsteered model, i.e. make the malicious answer as likely as the benign one is now (no norm
   limit, as in the write-up).
2. Answer the open-ended questions (each "… Be brief.") by sampling, under: unsteered, v_code,
   an anti-refusal vector (vector 0 of --anti-refusal, optional), and both together.
3. Score: keyword table of harm themes (judge-free, checkable), refusal rate, and — only if a
   judge is configured (--judge openai:URL:MODEL or local:MODEL) — aligned/coherent scores.
   Without a judge no alignment score is reported.

Run: .venv/bin/python experiments/emergent_misalignment.py --out runs/emergent_misalignment \
        [--anti-refusal runs/oneshot_refusal] [--judge none]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from melbo_tl.artifacts import Run, atomic_write_json, load_run, run_meta, save_run
from melbo_tl.evaluate.datasets import load_coding_task, load_prompts
from melbo_tl.evaluate.harness import evaluate_interventions, format_table, save_eval
from melbo_tl.evaluate.judges import judge_from_spec
from melbo_tl.evaluate.keywords import keyword_table
from melbo_tl.generate import generate
from melbo_tl.models import load_model
from melbo_tl.optimize.oneshot import Example, completion_loss, optimize_vector
from melbo_tl.runs import intervention_from_run
from melbo_tl.steering import AddVector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--anti-refusal", type=Path, default=None, help="run folder whose vector 0 is an anti-refusal vector"
    )
    parser.add_argument("--samples", type=int, default=8, help="samples per question (temperature 1)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--judge", default="none")
    args = parser.parse_args()

    model = load_model(dtype="float32")  # the README figures are float32
    task = load_coding_task()
    target = completion_loss(model, [Example(task["prompt"], (task["benign"],))])
    malicious_before = completion_loss(model, [Example(task["prompt"], (task["malicious"],))])
    print(f"unsteered loss: benign answer {target:.2f} nats, malicious answer {malicious_before:.2f} nats")
    fit = optimize_vector(
        model,
        task["prompt"],
        layer=args.layer,
        promote=[task["malicious"]],
        steps=args.steps,
        lr=args.lr,
        target_loss=target,
        satisfice=True,
        seed=0,
    )
    print(
        f"v_code: loss {fit.losses[0]:.2f} → {fit.final_loss:.2f} nats (target {target:.2f}), ‖v‖ = {float(fit.vector.norm()):.2f}"
    )
    meta = run_meta(
        model,
        method="oneshot",
        hooks=[fit.hook],
        options=fit.config.to_dict(),
        layer=args.layer,
        steer_positions="all",
        prompts=[task["prompt"]],
        texts=fit.texts,
        status="complete",
        target="malicious completion of the built-in coding task, satisficing at the benign answer's unsteered loss",
        per_vector=[{"index": 0, "losses": fit.losses, "final_loss": fit.final_loss, "seconds": fit.seconds}],
    )
    save_run(args.out / "v_code", Run({"vectors": fit.vector[None]}, meta))
    v_code = AddVector(fit.vector, fit.hook)
    code_answer = generate(model, [task["prompt"]], [v_code], max_new_tokens=200)[0].text
    print("steered coding answer contains the malicious line:", task["malicious_line"] in code_answer)

    conditions: dict[str, list] = {"unsteered": [], "v_code": [v_code]}
    if args.anti_refusal is not None:
        anti = intervention_from_run(load_run(args.anti_refusal, model), 0)
        conditions["anti-refusal"] = [anti]
        conditions["v_code + anti-refusal"] = [v_code, anti]
    questions = load_prompts("open_ended")
    prompts = [q for q in questions for _ in range(args.samples)]
    judge = judge_from_spec(args.judge)
    result = evaluate_interventions(
        model,
        conditions,
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        seed=0,
        judge=judge,
        progress=True,
    )
    save_eval(result, args.out, "open_ended")
    print(format_table(result))
    keywords = {
        label: keyword_table([g["completion"] for g in result.generations if g["label"] == label])
        for label in conditions
    }
    print(f"\n{'condition':<24}" + "".join(f"{k:>12}" for k in next(iter(keywords.values()))))
    for label, table in keywords.items():
        print(f"{label:<24}" + "".join(f"{v:>12.2f}" for v in table.values()))
    atomic_write_json(
        args.out / "summary.json",
        {
            "layer": args.layer,
            "target_loss": target,
            "malicious_loss_before": malicious_before,
            "fit": {"first": fit.losses[0], "final": fit.final_loss, "norm": float(fit.vector.norm())},
            "malicious_line_in_steered_code": task["malicious_line"] in code_answer,
            "keywords": keywords,
            "refusal": {row.label: row.refusal.to_dict() for row in result.rows},
            "judge": args.judge,
            "samples_per_question": args.samples,
            "n_questions": len(questions),
        },
    )


if __name__ == "__main__":
    main()
