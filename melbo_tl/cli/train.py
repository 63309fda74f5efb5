"""``melbo train`` and ``melbo sweep``: MELBO discovery runs written to run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import (
    DEFAULT_DTYPE,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    PositionsOpt,
    PromptsOpt,
    RayCpusOpt,
    RayGpusOpt,
    RayOpt,
    RayWorkersOpt,
    ResumeOpt,
    SeedOpt,
    echo_generations,
    load,
    parse_floats,
    ray_setup,
    status,
    write_run_outputs,
)

SourceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--source",
        metavar="SITE",
        help="where vectors are added: L (the residual entering block L), resid_post.L or a hook name "
        "[default: resid_post.7]",
        show_default=False,
    ),
]
TargetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--target",
        metavar="SITE",
        help="where the objective reads the change, after the source [default: n_layers − 8]",
        show_default=False,
    ),
]
StepsOpt = Annotated[int, typer.Option("--steps", min=0, metavar="K", help="optimizer steps per vector")]


def _mode(mode: str | None, independent: bool) -> str:
    if independent and mode not in (None, "independent"):
        raise ValueError(f"--independent contradicts --mode {mode}; give one of them.")
    return "independent" if independent else (mode or "orthogonal")


@app.command("train", short_help="Learn MELBO steering vectors (or adapters) into a run folder.")
def train_cmd(
    prompt: PromptsOpt,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    vectors: Annotated[
        int, typer.Option("--vectors", "-n", min=1, metavar="N", help="number of vectors (or adapters)")
    ] = 8,
    radius: Annotated[
        str,
        typer.Option(
            "--radius",
            "-R",
            metavar="R|auto",
            help="norm R of each vector (adapters: scale of B·Aᵀ); auto: calibrated (vectors only)",
        ),
    ] = "4",
    rho: Annotated[
        float, typer.Option("--rho", metavar="X", help="with --radius auto: the calibration target ρ")
    ] = 0.5,
    source: SourceOpt = None,
    target: TargetOpt = None,
    steps: StepsOpt = 300,
    positions: PositionsOpt = "all",
    p: Annotated[float, typer.Option("--p", metavar="P", help="exponent of the per-token norm")] = 2.0,
    q: Annotated[float, typer.Option("--q", metavar="Q", help="root taken of each prompt's sum")] = 1.0,
    lr: Annotated[float, typer.Option("--lr", metavar="LR")] = 1e-3,
    seed: SeedOpt = 0,
    mode: Annotated[
        Optional[str],
        typer.Option(
            "--mode",
            metavar="MODE",
            help="orthogonal (one at a time, the reference's) | batched-orthogonal (a batch at once, on the Stiefel manifold) | independent [default: orthogonal]",
            show_default=False,
        ),
    ] = None,
    independent: Annotated[bool, typer.Option("--independent", help="shorthand for --mode independent")] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, metavar="B", help="vectors per batch in independent mode (adapters: at most 4)"
        ),
    ] = 8,
    diversity_penalty: Annotated[
        float,
        typer.Option(
            "--diversity-penalty",
            metavar="W",
            help="soft orthogonality: penalty on cos² of caused changes (independent mode)",
        ),
    ] = 0.0,
    adapters: Annotated[bool, typer.Option("--adapters", help="train rank-r MLP adapters instead of vectors")] = False,
    rank: Annotated[int, typer.Option("--rank", min=1, metavar="r", help="adapter rank r")] = 8,
    random_baseline: Annotated[
        bool, typer.Option("--random-baseline", help="random vectors of norm R (steps = 0), same code path")
    ] = False,
    resume: ResumeOpt = False,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens", min=1, metavar="N", help="length of the greedy completions in generations.jsonl"
        ),
    ] = 64,
    device_map: DeviceMapOpt = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
) -> None:
    """Learn MELBO steering vectors (or adapters) on the prompts and write a run folder."""
    from melbo_tl.optimize.adapters import AdapterConfig
    from melbo_tl.optimize.melbo import MelboConfig
    from melbo_tl.training import train_to_folder

    steps = 0 if random_baseline else steps
    if adapters and radius == "auto":
        raise ValueError("--radius auto calibrates a steering vector's norm; give adapters a number.")
    common = dict(
        radius=radius,
        source=source,
        target=target,
        p=p,
        q=q,
        positions=positions,
        steps=steps,
        lr=lr,
        seed=seed,
    )
    if adapters:
        cfg = AdapterConfig(**common, rank=rank, n_adapters=vectors, batch_size=min(batch_size, 4))
        method = "melbo-adapter"
    else:
        cfg = MelboConfig(
            **common,
            n_vectors=vectors,
            mode=_mode(mode, independent),
            batch_size=batch_size,
            diversity_penalty=diversity_penalty,
            calibration_target=rho,
        )
        method = "melbo"
    on_ray = ray_setup(
        ray, ray_workers, ray_cpus, ray_gpus, model=model, device=device, dtype=dtype, device_map=device_map
    )
    if on_ray is not None:
        folder = _train_on_ray(on_ray, method, list(prompt), cfg, out, resume=resume, max_new_tokens=max_new_tokens)
    else:
        bridge = load(model, device=device, dtype=dtype, device_map=device_map)
        folder = train_to_folder(bridge, method, prompt, cfg, out, resume=resume)
        write_run_outputs(bridge, folder, list(prompt), max_new_tokens=max_new_tokens)
    typer.echo(f"wrote {folder}")


def _train_on_ray(
    on_ray: tuple[Any, Any], method: str, prompts: list[str], cfg: Any, out: Path, *, resume: bool, max_new_tokens: int
) -> Path:
    """``melbo train --ray``: the vector batches on Ray workers, then the greedy completions and
    loss figure written by one of them, as a single-process run writes them."""
    from functools import partial

    from melbo_tl.artifacts import read_jsonl
    from melbo_tl.distributed import UnitReport, train_to_folder_ray

    worker, cluster = on_ray
    report = UnitReport()
    outputs = partial(write_run_outputs, prompts=prompts, max_new_tokens=max_new_tokens, echo=False)
    folder = train_to_folder_ray(
        worker, method, prompts, cfg, out, cluster=cluster, resume=resume, outputs=outputs, report=report
    )
    status(
        f"ray: {report.units} units ({report.skipped} finished before, {len(report.retried)} retried) on "
        f"{report.workers} workers in {report.seconds:.1f} s"
    )
    echo_generations(read_jsonl(folder / "generations.jsonl"))
    return folder


@app.command("sweep", short_help="Train a few vectors per radius; diversity and perplexity of their completions.")
def sweep_cmd(
    prompt: Annotated[str, typer.Option("--prompt", "-p", metavar="TEXT", help="user message")],
    out: OutOpt,
    radii: Annotated[str, typer.Option("--radii", metavar="R,R,…", help="comma-separated radii R")] = "1,2,4,8,16",
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    vectors: Annotated[int, typer.Option("--vectors", "-n", min=1, metavar="N", help="vectors per radius")] = 4,
    source: SourceOpt = None,
    target: TargetOpt = None,
    steps: StepsOpt = 300,
    positions: PositionsOpt = "all",
    mode: Annotated[
        Optional[str],
        typer.Option("--mode", metavar="MODE", help="as for melbo train [default: orthogonal]", show_default=False),
    ] = None,
    independent: Annotated[bool, typer.Option("--independent", help="shorthand for --mode independent")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, metavar="N")] = 48,
    embedder: Annotated[str, typer.Option("--embedder", metavar="E", help="auto | minilm | model")] = "auto",
    seed: SeedOpt = 0,
    device_map: DeviceMapOpt = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
    resume: Annotated[
        bool, typer.Option("--resume", help="with --ray: continue a killed sweep in --out (finished radii are kept)")
    ] = False,
) -> None:
    """Train a few vectors per radius and report diversity and perplexity of their completions."""
    from melbo_tl.analysis.figures import radius_sweep_figure, write_html
    from melbo_tl.artifacts import atomic_write_json
    from melbo_tl.optimize.melbo import MelboConfig
    from melbo_tl.optimize.sweep import sweep_radius

    values = parse_floats(radii, "--radii")
    cfg = MelboConfig(
        radius=values[0], source=source, target=target, positions=positions, n_vectors=vectors, steps=steps,
        mode=_mode(mode, independent), seed=seed,
    )  # fmt: skip
    on_ray = ray_setup(
        ray, ray_workers, ray_cpus, ray_gpus, model=model, device=device, dtype=dtype, device_map=device_map
    )
    if on_ray is not None:
        from melbo_tl.distributed import sweep_radius_ray

        result = sweep_radius_ray(
            on_ray[0], prompt, values, cfg, out=out, cluster=on_ray[1], resume=resume, max_new_tokens=max_new_tokens,
            embedder=embedder,
        )  # fmt: skip
    else:
        if resume:
            raise ValueError("--resume continues a killed --ray sweep; a sweep without --ray starts afresh.")
        bridge = load(model, device=device, dtype=dtype, device_map=device_map)
        result = sweep_radius(bridge, prompt, values, cfg, max_new_tokens=max_new_tokens, embedder=embedder)
    Path(out).mkdir(parents=True, exist_ok=True)
    table = {**result.to_dict(), "prompt": prompt}
    atomic_write_json(out / "sweep.json", table)
    write_html(radius_sweep_figure(table["rows"], embedder=result.embedder), out / "sweep.html")
    typer.echo(f"{'R':>8} {'diversity':>10} {'perplexity':>11} {'objective':>10} {'seconds':>8}")
    for row in result.rows:
        typer.echo(
            f"{row.radius:>8g} {row.diversity:>10.3f} {row.perplexity:>11.2f} {row.objective:>10.4g} {row.seconds:>8.1f}"
        )
    if on_ray is not None:
        from melbo_tl.distributed import finish

        finish(out)
    typer.echo(f"best R by diversity: {result.best_radius():g} (embedder: {result.embedder}); wrote {out}")
