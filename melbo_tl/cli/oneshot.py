"""``melbo oneshot``: fit one-shot steering vectors on a single example into a run folder."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import (
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    PositionsOpt,
    PromptsOpt,
    ResumeOpt,
    SeedOpt,
    load,
    write_run_outputs,
)


@app.command("oneshot", short_help="Fit one-shot steering vectors that promote/suppress completions.")
def oneshot_cmd(
    prompt: PromptsOpt,
    out: OutOpt,
    layer: Annotated[
        str,
        typer.Option(
            "--site",
            "--layer",
            "-l",
            metavar="SITE",
            help="where the vector acts: L (the residual entering block L), resid_post.L or a hook name",
        ),
    ],
    promote: Annotated[
        list[str], typer.Option("--promote", metavar="TEXT", help="completion to make likely (repeatable)")
    ] = [],  # noqa: B006
    suppress: Annotated[
        list[str], typer.Option("--suppress", metavar="TEXT", help="completion to make unlikely (repeatable)")
    ] = [],  # noqa: B006
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    vectors: Annotated[
        int, typer.Option("--vectors", "-n", min=1, metavar="N", help="independent vectors, seeds SEED…SEED+N−1")
    ] = 1,
    steps: Annotated[int, typer.Option("--steps", min=0, metavar="K")] = 50,
    lr: Annotated[float, typer.Option("--lr", metavar="LR")] = 0.1,
    coldness: Annotated[
        float, typer.Option("--coldness", metavar="C", help="probabilities are softmax(coldness · logits)")
    ] = 0.7,
    max_norm: Annotated[Optional[float], typer.Option("--max-norm", metavar="N", help="keep ‖v‖ ≤ N")] = None,
    target_loss: Annotated[
        Optional[float], typer.Option("--target-loss", metavar="X", help="stop once the loss (nats) reaches X")
    ] = None,
    satisfice: Annotated[
        bool, typer.Option("--satisfice", help="minimize (loss − target)² instead of stopping")
    ] = False,
    positions: PositionsOpt = "all",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, metavar="N")] = 64,
) -> None:
    """Fit steering vectors that promote/suppress completions of the prompt(s) (Dunefsky's method)."""
    from melbo_tl.artifacts import load_run
    from melbo_tl.optimize.oneshot import OneShotConfig
    from melbo_tl.training import train_to_folder

    cfg = OneShotConfig(
        site=layer, promote=tuple(promote), suppress=tuple(suppress), coldness=coldness, lr=lr, steps=steps,
        max_norm=max_norm, target_loss=target_loss, satisfice=satisfice, positions=positions, seed=seed, n_vectors=vectors,
    )  # fmt: skip
    if not cfg.promote and not cfg.suppress:
        raise ValueError("Give at least one completion to --promote or --suppress.")
    bridge = load(model, device=device, dtype=dtype)
    folder = train_to_folder(bridge, "oneshot", prompt, cfg, out, resume=resume)
    for row in load_run(folder).meta["per_vector"]:
        first = row["losses"][0] if row["losses"] else float("nan")
        typer.echo(
            f"vector {row['index']}: loss {first:.3f} → {row['final_loss']:.3f} nats, ‖v‖ = {row['norm']:.2f}, {row['seconds']:.1f} s"
        )
    write_run_outputs(bridge, folder, list(prompt), max_new_tokens=max_new_tokens)
    typer.echo(f"wrote {out}")
