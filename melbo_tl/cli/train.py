"""``melbo train`` and ``melbo sweep``: MELBO discovery runs written to run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import (
    DEFAULT_DTYPE,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    PromptsOpt,
    RayCpusOpt,
    RayGpusOpt,
    RayOpt,
    RayWorkersOpt,
    ResumeOpt,
    echo_generations,
    load,
    parse_floats,
    ray_setup,
    status,
    write_run_outputs,
)
from melbo_tl.cli.options import config_command
from melbo_tl.optimize.configs import AdapterConfig, MelboConfig

# What an adapter run takes from the options (the rest are MELBO vectors' own).
ADAPTER_SETTINGS = ("radius", "source", "target", "p", "q", "positions", "steps", "lr", "seed", "chat")


def _config(settings: dict[str, Any], *, adapters: bool, rank: int, random_baseline: bool) -> tuple[str, Any]:
    """The method and config the options ask for (checked before any model is loaded)."""
    if random_baseline:
        settings = {**settings, "steps": 0}
    if not adapters:
        return "melbo", MelboConfig(**settings)
    if settings["radius"] == "auto":
        raise ValueError("--radius auto calibrates a steering vector's norm; give adapters a number.")
    common = {k: settings[k] for k in ADAPTER_SETTINGS}
    batch = min(settings["batch_size"], 4)
    return "melbo-adapter", AdapterConfig(**common, rank=rank, n_adapters=settings["n_vectors"], batch_size=batch)


@app.command("train", short_help="Learn MELBO steering vectors (or adapters) into a run folder.")
@config_command(MelboConfig)
def train_cmd(
    settings: dict,
    prompt: PromptsOpt,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    adapters: Annotated[
        bool, typer.Option("--adapters", help="train rank-r MLP adapters instead of vectors (--n-vectors of them)")
    ] = False,
    rank: Annotated[int, typer.Option("--rank", min=1, metavar="r", help="with --adapters: adapter rank r")] = 8,
    random_baseline: Annotated[
        bool, typer.Option("--random-baseline", help="random vectors of norm R (--steps 0), same code path")
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
    method, cfg = _config(settings, adapters=adapters, rank=rank, random_baseline=random_baseline)
    on_ray = ray_setup(
        ray, ray_workers, ray_cpus, ray_gpus, model=model, device=device, dtype=dtype, device_map=device_map
    )
    if on_ray is not None:
        folder = _train_on_ray(on_ray, method, list(prompt), cfg, out, resume=resume, max_new_tokens=max_new_tokens)
    else:
        from melbo_tl.training import train_to_folder

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
@config_command(MelboConfig, skip=("radius",), defaults={"n_vectors": 4})
def sweep_cmd(
    settings: dict,
    prompt: Annotated[str, typer.Option("--prompt", "-p", metavar="TEXT", help="user message")],
    out: OutOpt,
    radii: Annotated[str, typer.Option("--radii", metavar="R,R,…", help="comma-separated radii R")] = "1,2,4,8,16",
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, metavar="N")] = 48,
    embedder: Annotated[str, typer.Option("--embedder", metavar="E", help="auto | minilm | model")] = "auto",
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
    values = parse_floats(radii, "--radii")
    cfg = MelboConfig(**settings, radius=values[0])
    from melbo_tl.analysis.figures import radius_sweep_figure, write_html
    from melbo_tl.artifacts import atomic_write_json
    from melbo_tl.optimize.sweep import sweep_radius

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
