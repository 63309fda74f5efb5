"""``melbo oneshot``: fit one-shot steering vectors on a single example into a run folder."""

from __future__ import annotations

from typing import Annotated

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import (
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    PromptsOpt,
    ResumeOpt,
    load,
    write_run_outputs,
)
from melbo_tl.cli.options import config_command
from melbo_tl.optimize.configs import OneShotConfig


@app.command("oneshot", short_help="Fit one-shot steering vectors that promote/suppress completions.")
@config_command(OneShotConfig)
def oneshot_cmd(
    settings: dict,
    prompt: PromptsOpt,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    resume: ResumeOpt = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, metavar="N")] = 64,
) -> None:
    """Fit steering vectors that promote/suppress completions of the prompt(s) (Dunefsky's method)."""
    cfg = OneShotConfig(**settings)
    if not cfg.promote and not cfg.suppress:
        raise ValueError("Give at least one completion to --promote or --suppress.")
    from melbo_tl.artifacts import load_run
    from melbo_tl.training import train_to_folder

    bridge = load(model, device=device, dtype=dtype)
    folder = train_to_folder(bridge, "oneshot", prompt, cfg, out, resume=resume)
    for row in load_run(folder).meta["per_vector"]:
        first = row["losses"][0] if row["losses"] else float("nan")
        typer.echo(
            f"vector {row['index']}: loss {first:.3f} → {row['final_loss']:.3f} nats, ‖v‖ = {row['norm']:.2f}, {row['seconds']:.1f} s"
        )
    write_run_outputs(bridge, folder, list(prompt), max_new_tokens=max_new_tokens)
    typer.echo(f"wrote {out}")
