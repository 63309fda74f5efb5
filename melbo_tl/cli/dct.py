"""``melbo dct``: deep causal transcoding, hundreds of calibrated steering vectors from one prompt."""

from __future__ import annotations

from typing import Annotated

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
    VectorChoice,
    load,
    ray_setup,
    status,
    write_run_outputs,
)
from melbo_tl.cli.options import config_command
from melbo_tl.optimize.configs import DCTConfig


@app.command("dct", short_help="Deep causal transcoding: F calibrated steering vectors at once, ranked.")
@config_command(DCTConfig)
def dct_cmd(
    settings: dict,
    prompt: PromptsOpt,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    vectors: Annotated[
        str,
        typer.Option(
            "--vectors",
            "--vector",
            metavar="SPEC",
            help="vectors whose greedy completions go to generations.jsonl: all | I,J,A-B | top:N (rank order)",
        ),
    ] = "top:32",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, metavar="N")] = 48,
    resume: ResumeOpt = False,
    device_map: DeviceMapOpt = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
) -> None:
    """Fit F steering vectors at once by deep causal transcoding (Mack & Turner) and write a run folder
    with the vectors in rank order (R·v_l; --rank-by behaviours: coherent, distinct behaviours first),
    their output directions U, α, importance and factor order, and the ρ(R) calibration curve; then greedy completions of the top vectors into generations.jsonl. With --ray,
    the forward and backward passes over the factors run as chunks (--chunk-size rows) on Ray workers."""
    cfg = DCTConfig(**settings)  # every check that needs no model, before loading it
    chosen = VectorChoice(vectors)
    from melbo_tl.artifacts import load_run
    from melbo_tl.training import train_to_folder

    on_ray = ray_setup(
        ray, ray_workers, ray_cpus, ray_gpus, model=model, device=device, dtype=dtype, device_map=device_map
    )
    bridge = load(model, device=device, dtype=dtype, device_map=device_map)
    if on_ray is not None:  # this process keeps the fit's bookkeeping; the F-row passes go to the workers
        from melbo_tl.distributed import dct_on_workers

        with dct_on_workers(on_ray[0], prompt, cfg, cluster=on_ray[1]) as workers:
            folder = train_to_folder(bridge, "dct", prompt, cfg, out, resume=resume, backend=workers)
    else:
        folder = train_to_folder(bridge, "dct", prompt, cfg, out, resume=resume)
    meta = load_run(folder).meta
    cal = meta.get("calibration")
    if cal:
        curve = ", ".join(f"{r:.3g}:{p:.2f}" for r, p in zip(cal["radii"], cal["rho"]))
        status(f"calibrated R = {meta['radius']:.3f} (ρ = {cal['target']:g}; R:ρ {curve}) in {cal['seconds']:.1f} s")
    moved = meta["movement"][-1] if meta.get("movement") else None
    how_far = (
        f"; last movement (1 − cos) median {moved['median']:.2g}, max {moved['max']:.2g}, "
        f"{moved['converged']:.0%} of factors under {cfg.tolerance:g}"
        if moved
        else ""
    )
    status(
        f"{meta['iteration']} iterations ({'converged' if meta['converged'] else 'not converged'}{how_far}), fit "
        f"{meta['seconds'].get('fit', 0):.1f} s; K condition number {meta['condition_number']:.3g}; "
        f"order: {meta['rank_by']}"
    )
    indices = chosen.resolve(len(meta["per_vector"]))
    write_run_outputs(bridge, folder, list(prompt), max_new_tokens=max_new_tokens, indices=indices)
    typer.echo(f"wrote {folder}")
