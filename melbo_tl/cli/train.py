"""``melbo train`` and ``melbo sweep``: MELBO discovery runs written to run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from melbo_tl.cli.app import DEFAULT_MODEL_HELP, app


@app.command()
def train(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="training prompt (repeat for several)"),
    out: Path = typer.Option(..., "--out", help="run folder to write"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=DEFAULT_MODEL_HELP),
    vectors: int = typer.Option(8, "--vectors", "-n", help="number of vectors (or adapters)"),
    radius: float = typer.Option(4.0, "--radius", "-R", help="norm R of each vector (adapters: scale of B·Aᵀ)"),
    source: Optional[int] = typer.Option(
        None, "--source", help="source layer s: added at blocks.s.hook_resid_post [default: 7]"
    ),
    target: Optional[int] = typer.Option(
        None, "--target", help="target layer t: reads blocks.t.hook_resid_pre [default: n_layers − 8]"
    ),
    steps: int = typer.Option(300, "--steps"),
    positions: str = typer.Option("all", "--positions", help="objective tokens: all | last:K | i,j | a:b"),
    p: float = typer.Option(2.0, "--p"),
    q: float = typer.Option(1.0, "--q"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    independent: bool = typer.Option(
        False, "--independent", help="train vectors independently in batches instead of orthogonally"
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="vectors per batch in independent mode"),
    diversity_penalty: float = typer.Option(
        0.0, "--diversity-penalty", help="soft orthogonality: penalty on cos² of caused changes (independent mode)"
    ),
    adapters: bool = typer.Option(False, "--adapters", help="train rank-r MLP adapters instead of vectors"),
    rank: int = typer.Option(8, "--rank", help="adapter rank r"),
    random_baseline: bool = typer.Option(
        False, "--random-baseline", help="random vectors of norm R (steps = 0), same code path"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", help="length of the greedy completions written to generations.jsonl"
    ),
) -> None:
    """Learn MELBO steering vectors (or adapters) on the prompts and write a run folder."""
    from analysis.figures import loss_curves, write_html
    from melbo_tl.artifacts import load_run
    from melbo_tl.models import DEFAULT_MODEL, load_model
    from melbo_tl.optimize.checkpoint import train_to_folder
    from melbo_tl.runs import write_generations

    bridge = load_model(model or DEFAULT_MODEL)
    folder = train_to_folder(
        bridge,
        prompt,
        out,
        resume=resume,
        adapters=adapters,
        rank=rank,
        radius=radius,
        source_layer=source,
        target_layer=target,
        positions=positions,
        n_vectors=vectors,
        steps=0 if random_baseline else steps,
        p=p,
        q=q,
        lr=lr,
        seed=seed,
        orthogonal=not (independent or adapters),
        batch_size=batch_size if not adapters else min(batch_size, 4),
        **({"diversity_penalty": diversity_penalty} if not adapters else {}),
    )
    run = load_run(folder, bridge)
    rows = write_generations(bridge, run, folder, prompt, max_new_tokens=max_new_tokens)
    if any(run.meta["per_vector"][i]["losses"] for i in range(len(run.meta["per_vector"]))):
        write_html(loss_curves([r["losses"] for r in run.meta["per_vector"]]), folder / "losses.html")
    for row in rows:
        who = "unsteered" if row["vector"] is None else f"vector {row['vector']}"
        typer.echo(f"[{who}] {row['completion']!r}")
    typer.echo(f"wrote {folder}")


@app.command()
def sweep(
    prompt: str = typer.Option(..., "--prompt", "-p"),
    out: Path = typer.Option(..., "--out"),
    radii: str = typer.Option("1,2,4,8,16", "--radii", help="comma-separated radii R"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=DEFAULT_MODEL_HELP),
    vectors: int = typer.Option(4, "--vectors", "-n", help="vectors per radius"),
    source: Optional[int] = typer.Option(None, "--source"),
    target: Optional[int] = typer.Option(None, "--target"),
    steps: int = typer.Option(300, "--steps"),
    positions: str = typer.Option("all", "--positions"),
    independent: bool = typer.Option(False, "--independent", help="batched independent vectors instead of orthogonal"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens"),
    embedder: str = typer.Option("auto", "--embedder", help="auto | minilm | model"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a few vectors per radius and report diversity and perplexity of their completions."""
    from analysis.figures import radius_sweep_figure, write_html
    from melbo_tl.artifacts import atomic_write_json
    from melbo_tl.models import DEFAULT_MODEL, load_model
    from melbo_tl.optimize.sweep import sweep_radius

    try:
        values = [float(r) for r in radii.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--radii must be comma-separated numbers, got {radii!r}.") from None
    bridge = load_model(model or DEFAULT_MODEL)
    result = sweep_radius(
        bridge,
        prompt,
        values,
        n_vectors=vectors,
        steps=steps,
        max_new_tokens=max_new_tokens,
        embedder=embedder,
        source_layer=source,
        target_layer=target,
        positions=positions,
        orthogonal=not independent,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    table = result.to_dict()
    table["prompt"] = prompt
    atomic_write_json(out / "sweep.json", table)
    write_html(radius_sweep_figure(table["rows"], embedder=result.embedder), out / "sweep.html")
    typer.echo(f"{'R':>8} {'diversity':>10} {'perplexity':>11} {'objective':>10} {'seconds':>8}")
    for row in result.rows:
        typer.echo(
            f"{row.radius:>8g} {row.diversity:>10.3f} {row.perplexity:>11.2f} {row.objective:>10.4g} {row.seconds:>8.1f}"
        )
    typer.echo(f"best R by diversity: {result.best_radius():g} (embedder: {result.embedder}); wrote {out}")
