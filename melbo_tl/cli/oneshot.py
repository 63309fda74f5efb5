"""``melbo oneshot``: fit one-shot steering vectors on a single example into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from melbo_tl.cli.app import DEFAULT_MODEL_HELP, app


@app.command()
def oneshot(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="training prompt (repeat for a few)"),
    out: Path = typer.Option(..., "--out", help="run folder to write"),
    layer: int = typer.Option(..., "--layer", "-l", help="the vector acts at blocks.LAYER.hook_resid_pre"),
    promote: list[str] = typer.Option([], "--promote", help="completion to make likely (repeatable)"),
    suppress: list[str] = typer.Option([], "--suppress", help="completion to make unlikely (repeatable)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=DEFAULT_MODEL_HELP),
    vectors: int = typer.Option(1, "--vectors", "-n", help="independent vectors, seeds SEED…SEED+N−1"),
    steps: int = typer.Option(50, "--steps"),
    lr: float = typer.Option(0.1, "--lr"),
    coldness: float = typer.Option(0.7, "--coldness", help="probabilities are softmax(coldness · logits)"),
    max_norm: Optional[float] = typer.Option(None, "--max-norm"),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", help="stop once the loss (nats) reaches this"),
    satisfice: bool = typer.Option(False, "--satisfice", help="minimize (loss − target)² instead of stopping"),
    positions: str = typer.Option(
        "all", "--positions", help="where the vector acts: all | prompt | last:K | i,j | a:b"
    ),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="keep the vectors already in --out and fit the rest"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
) -> None:
    """Fit steering vectors that promote/suppress completions of the prompt(s) (Dunefsky's method)."""
    from melbo_tl.artifacts import RUN_FILE, Run, load_run, run_meta, save_run
    from melbo_tl.models import DEFAULT_MODEL, load_model
    from melbo_tl.optimize.oneshot import optimize_vector
    from melbo_tl.runs import write_generations

    if vectors < 1:
        raise ValueError(f"--vectors must be ≥ 1, got {vectors}.")
    bridge = load_model(model or DEFAULT_MODEL)
    options = dict(
        layer=layer,
        promote=list(promote),
        suppress=list(suppress),
        coldness=coldness,
        lr=lr,
        steps=steps,
        max_norm=max_norm,
        target_loss=target_loss,
        satisfice=satisfice,
        positions=positions,
    )
    done: list = []
    if (out / RUN_FILE).is_file():
        if not resume:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out.")
        previous = load_run(out, bridge)
        if previous.meta.get("options") != options or previous.meta.get("prompts") != list(prompt):
            raise ValueError(f"Cannot resume {out}: it was fitted with other prompts or options.")
        done = [(previous.vectors[i], row) for i, row in enumerate(previous.meta["per_vector"])]

    def save(status: str, texts: list[str]) -> None:
        import torch

        meta = run_meta(
            bridge,
            method="oneshot",
            hooks=[f"blocks.{layer}.hook_resid_pre"] * len(done),
            options=options,
            layer=layer,
            seed=seed,
            steer_positions=positions,
            prompts=list(prompt),
            texts=texts,
            status=status,
            per_vector=[row for _, row in done],
        )
        save_run(out, Run({"vectors": torch.stack([v for v, _ in done])}, meta))

    texts: list[str] = []
    for index in range(len(done), vectors):
        result = optimize_vector(bridge, list(prompt), seed=seed + index, **options)
        texts = result.texts
        done.append(
            (
                result.vector,
                {
                    "index": index,
                    "seed": seed + index,
                    "losses": result.losses,
                    "final_loss": result.final_loss,
                    "stopped_early": result.stopped_early,
                    "seconds": result.seconds,
                    "norm": float(result.vector.norm()),
                },
            )
        )
        save("running", texts)
        typer.echo(
            f"vector {index}: loss {result.losses[0] if result.losses else float('nan'):.3f} → {result.final_loss:.3f} nats, "
            f"‖v‖ = {float(result.vector.norm()):.2f}, {result.seconds:.1f} s"
        )
    save("complete", texts or load_run(out).meta.get("texts", []))
    run = load_run(out, bridge)
    for row in write_generations(bridge, run, out, list(prompt), max_new_tokens=max_new_tokens):
        who = "unsteered" if row["vector"] is None else f"vector {row['vector']}"
        typer.echo(f"[{who}] {row['completion']!r}")
    typer.echo(f"wrote {out}")
