"""``melbo dct``: deep causal transcoding, hundreds of calibrated steering vectors from one prompt."""

from __future__ import annotations

from typing import Annotated, Optional

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
    SeedOpt,
    load,
    ray_setup,
    status,
    write_run_outputs,
)


@app.command("dct", short_help="Deep causal transcoding: F calibrated steering vectors at once, ranked.")
def dct_cmd(
    prompt: PromptsOpt,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    factors: Annotated[
        int, typer.Option("--factors", "-F", min=1, metavar="F", help="number of factors (vectors)")
    ] = 256,
    source: Annotated[
        Optional[int],
        typer.Option(
            "--source", metavar="S", help="vectors added at blocks.S.hook_resid_post [default: 7]", show_default=False
        ),
    ] = None,
    target: Annotated[
        Optional[int],
        typer.Option(
            "--target",
            metavar="T",
            help="response read at blocks.T.hook_resid_pre [default: n_layers − 8]",
            show_default=False,
        ),
    ] = None,
    positions: Annotated[str, typer.Option("--positions", metavar="SPEC", help="target positions averaged")] = "last:3",
    radius: Annotated[
        str, typer.Option("--radius", "-R", metavar="auto|R", help="R, or auto: calibrated so that ρ(R) = --rho")
    ] = "auto",
    rho: Annotated[
        float, typer.Option("--rho", metavar="X", help="calibration target: non-linear / linear response")
    ] = 0.5,
    iterations: Annotated[
        int, typer.Option("--iterations", min=0, metavar="N", help="alternating updates at most")
    ] = 10,
    variant: Annotated[
        str,
        typer.Option("--variant", metavar="NAME", help="melbo_tl | reference: the algorithm choices left unset below"),
    ] = "melbo_tl",
    start: Annotated[
        Optional[str],
        typer.Option("--start", metavar="HOW", help="jacobian | jacobian-svd | random", show_default=False),
    ] = None,
    update: Annotated[
        Optional[str],
        typer.Option(
            "--update",
            metavar="HOW",
            help="alternating | simultaneous (u of the v-update: new or previous)",
            show_default=False,
        ),
    ] = None,
    beta: Annotated[
        Optional[float], typer.Option("--beta", metavar="B", help="damping in (0, 1]; 1: none", show_default=False)
    ] = None,
    orthogonalize: Annotated[
        Optional[str],
        typer.Option("--orthogonalize", metavar="HOW", help="polar | qr | none (sign-keeping)", show_default=False),
    ] = None,
    rank_by: Annotated[
        Optional[str],
        typer.Option(
            "--rank-by",
            metavar="KEY",
            help='behaviours | importance | alpha | alpha2 | "A:B" (logit A − logit B at the last position)',
            show_default=False,
        ),
    ] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, metavar="N", help="factors per forward pass")] = 64,
    seed: SeedOpt = 0,
    top: Annotated[
        int, typer.Option("--top", min=0, metavar="N", help="greedy completions of the N top-ranked vectors (0: all)")
    ] = 32,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, metavar="N")] = 48,
    resume: ResumeOpt = False,
    device_map: DeviceMapOpt = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
) -> None:
    """Fit F steering vectors at once by deep causal transcoding (Mack & Turner) and write a run folder
    with the vectors in rank order (R·v_l; --rank-by behaviours: coherent, distinct behaviours
    first), their output directions U, α, importance and factor order, and the ρ(R) calibration
    curve; then greedy completions of the top vectors into generations.jsonl. With --ray,
    the forward and backward passes over the factors run as chunks (--chunk-size rows) on Ray workers."""
    from melbo_tl.artifacts import load_run
    from melbo_tl.optimize.dct import DCTConfig
    from melbo_tl.training import train_to_folder

    cfg = DCTConfig(
        n_factors=factors, source_layer=source, target_layer=target, positions=positions, radius=radius,
        calibration_target=rho, iterations=iterations, variant=variant, start=start, update=update, beta=beta,
        orthogonalize=orthogonalize, rank_by=rank_by, chunk_size=chunk_size, seed=seed,
    )  # fmt: skip
    on_ray = ray_setup(
        ray, ray_workers, ray_cpus, ray_gpus, model=model, device=device, dtype=dtype, device_map=device_map
    )
    bridge = load(model, device=device, dtype=dtype, device_map=device_map)
    if on_ray is not None:  # this process keeps the fit's bookkeeping; the F-row passes go to the workers
        from melbo_tl.distributed import dct_on_workers

        with dct_on_workers(on_ray[0], prompt, cfg, cluster=on_ray[1]):
            folder = train_to_folder(bridge, "dct", prompt, cfg, out, resume=resume)
    else:
        folder = train_to_folder(bridge, "dct", prompt, cfg, out, resume=resume)
    meta = load_run(folder).meta
    cal = meta.get("calibration")
    if cal:
        curve = ", ".join(f"{r:.3g}:{p:.2f}" for r, p in zip(cal["radii"], cal["rho"]))
        status(f"calibrated R = {meta['radius']:.3f} (ρ = {cal['target']:g}; R:ρ {curve}) in {cal['seconds']:.1f} s")
    moved = meta["movement"][-1] if meta["movement"] else None
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
    n = len(meta["per_vector"])
    indices = list(range(n if top == 0 else min(top, n)))
    write_run_outputs(bridge, folder, list(prompt), max_new_tokens=max_new_tokens, indices=indices)
    typer.echo(f"wrote {folder}")
