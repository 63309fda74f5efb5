"""``melbo export`` and ``melbo import-control-vector``: llama.cpp GGUF control vectors out and in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DeviceOpt, ModelOpt, VectorChoice, load

FORMATS = ("gguf",)


@app.command("export", short_help="Write one vector of a run as a llama.cpp control vector (GGUF).")
def export_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder (vectors.safetensors + run.json)")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE.gguf", help="control-vector file to write")],
    vectors: Annotated[
        str, typer.Option("--vectors", "--vector", metavar="I", help="index of the vector in RUN (from 0)")
    ] = "0",
    scale: Annotated[float, typer.Option("--scale", metavar="S", help="multiply the vector by S")] = 1.0,
    format: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="gguf (llama.cpp --control-vector)")
    ] = "gguf",
) -> None:
    """Write vector I of RUN (times S) as a GGUF control vector for llama.cpp's --control-vector.

    blocks.s.hook_resid_post becomes direction.s, blocks.s.hook_resid_pre direction.(s−1);
    adapters, clamps, ablations and vectors acting on some positions only are refused.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; valid: {', '.join(FORMATS)}.")
    vector = VectorChoice(vectors).one()
    from melbo_tl.artifacts import load_run
    from melbo_tl.export.from_run import control_vector_from_run
    from melbo_tl.export.gguf_control_vector import write_control_vector

    cv = control_vector_from_run(load_run(run), vector, scale=scale, run_path=str(run))
    write_control_vector(out, cv)
    [(layer, v)] = cv.directions.items()
    typer.echo(
        f"wrote {out}: direction.{layer} (= {cv.source['hook']}, ‖v‖ = {float(v.norm()):.4g}, model hint "
        f"{cv.model_hint!r})\nuse: llama-completion -m MODEL.gguf --control-vector {out}  (or --control-vector-scaled {out}:SCALE)"
    )


@app.command("import-control-vector", short_help="Read a llama.cpp control vector (GGUF) into a run folder.")
def import_cmd(
    file: Annotated[
        Path, typer.Argument(metavar="FILE.gguf", help="GGUF control vector (melbo export, llama.cpp, repeng)")
    ],
    out: Annotated[
        Optional[Path], typer.Option("--out", metavar="DIR", help="run folder to write [default: runs/<file name>]")
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Read a GGUF control vector into a run folder: direction.N → a vector at blocks.N.hook_resid_post.

    With --model, the vectors are checked against that model and run.json records it.
    """
    from melbo_tl.artifacts import load_run
    from melbo_tl.export.method import import_control_vector

    folder = out if out is not None else Path("runs") / file.stem
    bridge = load(model, device=device) if model is not None else None
    import_control_vector(file, folder, model=bridge)
    run = load_run(folder)
    for i, hook in enumerate(run.hooks):
        typer.echo(f"vector {i}: {hook}, ‖v‖ = {float(run.vectors[i].norm()):.4g}")
    typer.echo(f"wrote {folder}")
