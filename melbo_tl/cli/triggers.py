"""``melbo recover-trigger``: from a vector's behaviour back to an edit of the prompt that fires it unsteered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, load, run_model, status
from melbo_tl.cli.options import config_command
from melbo_tl.triggers.config import RecoveryConfig


def _check_vector(run: Path, index: int) -> None:
    """The index against the run's vector count, read from run.json (no model loaded)."""
    if index < 0:
        raise ValueError(f"--vector {index}: indices count from 0.")
    n = json.loads((run / "run.json").read_text()).get("n_vectors")
    if isinstance(n, int) and index >= n:
        raise ValueError(f"--vector {index} is out of range: {run} holds {n} vectors (valid 0…{n - 1}).")


@app.command(
    "recover-trigger", short_help="Search edits of the prompt that make the unsteered model do what a vector does."
)
@config_command(RecoveryConfig)
def recover_trigger_cmd(
    settings: dict,
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    vector: Annotated[int, typer.Option("--vector", "-v", metavar="I", help="index of the vector in RUN")],
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompt", "-p", metavar="TEXT", help="clean user message; repeat for several [default: the run's prompts]"
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", metavar="DIR", help="folder for the results [default: RUN/triggers/vector_I]"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted recovery (same settings)")] = False,
    show: Annotated[int, typer.Option("--show", metavar="N", min=1, help="triggers per prompt printed")] = 5,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Generate vector I's steered completion of each clean prompt (the behaviour), search
    single-token substitutions and insertions in the prompt, then combinations of them, that make
    the unsteered model produce it, and verify the best by unsteered greedy generation. Writes
    triggers.json (ranked, verified first) and resumable search state; a rerun with --resume continues."""
    cfg = RecoveryConfig(**settings)  # every check that needs no model, before loading it
    spec = run_model(run, model)
    _check_vector(run, vector)
    from melbo_tl.triggers.recovery import recover_trigger, triggers_dir

    bridge = load(spec, device=device, dtype=dtype)
    result = recover_trigger(bridge, run, vector, cfg, prompts=prompt or None, out=out, resume=resume)
    for p in result.prompts:
        status(
            f"{p.prompt!r}: {len(p.verified)} verified of {min(cfg.n_verify, len(p.triggers))} checked, "
            f"{p.n_evaluated} edits scored in {p.cost['seconds'] + p.cost['verify_seconds']:.0f} s"
        )
    typer.echo(result.table(show), nl=False)
    typer.echo(f"wrote {out or triggers_dir(run, vector)}")


@app.command("dashboard", short_help="One page per vector: top contexts, completions, logit lens, r̂ cosine, triggers.")
def dashboard_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    vector: Annotated[int, typer.Option("--vector", "-v", metavar="I", help="index of the vector in RUN")],
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompt", "-p", metavar="TEXT", help="prompt for the steered completions; repeatable [default: the run's]"
        ),
    ] = None,
    n_per_set: Annotated[
        int, typer.Option("--n-prompts", min=1, metavar="N", help="built-in harmless and harmful prompts read, each")
    ] = 48,
    top: Annotated[int, typer.Option("--top", min=1, metavar="N", help="top-activating contexts shown")] = 8,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Write RUN/analysis/dashboard_I.html (and .json): the built-in prompts whose tokens project
    furthest on vector I at its site, its steered completions, its logit-lens readout, its cosine
    with r̂ at that site and the triggers `melbo recover-trigger` found; `melbo report RUN` includes it."""
    spec = run_model(run, model)
    _check_vector(run, vector)
    from melbo_tl.analysis.dashboard import vector_dashboard, write_dashboard

    bridge = load(spec, device=device, dtype=dtype)
    dash = vector_dashboard(bridge, run, vector, prompts=prompt or None, n_per_set=n_per_set, top=top)
    cos = "–" if dash.refusal_cosine is None else f"{dash.refusal_cosine:+.3f}"
    status(
        f"vector {vector} at {dash.site}: ‖v‖ {dash.norm:.2f}, cos with r̂ {cos}, top context {dash.contexts[0].prompt[:60]!r}"
    )
    typer.echo(f"wrote {write_dashboard(dash, run)}")
