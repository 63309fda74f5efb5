"""``melbo triage`` and ``melbo enumerate``: from hundreds of vectors to a map of behaviours."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, load, run_model, status
from melbo_tl.cli.options import config_command
from melbo_tl.evaluate.triage_config import TriageConfig

ThresholdOpt = Annotated[
    float,
    typer.Option("--threshold", metavar="D", help=TriageConfig.__dataclass_fields__["threshold"].metadata["help"]),
]


@app.command("triage", short_help="Score, cluster and shortlist every vector of a run; the behaviour atlas.")
@config_command(TriageConfig)
def triage_cmd(
    settings: dict,
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    projection: Annotated[str, typer.Option("--projection", metavar="tsne|pca", help="2-D map of the atlas")] = "tsne",
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Generate completions for every vector of RUN (batched), score fluency, novelty, refusal and
    degeneracy, cluster the behaviours, and write RUN/triage/ (behaviours, clusters, shortlist,
    atlas); a rerun with the same options resumes."""
    from melbo_tl.analysis.names import PROJECTIONS

    cfg = TriageConfig(**settings)  # every check that needs no model, before loading it
    if projection not in PROJECTIONS:
        raise ValueError(f"--projection {projection!r} is not one of {', '.join(PROJECTIONS)}.")
    spec = run_model(run, model)
    from melbo_tl.analysis.atlas import write_atlas
    from melbo_tl.evaluate.triage import triage_run

    bridge = load(spec, device=device, dtype=dtype)
    result = triage_run(bridge, run, cfg)
    folder = write_atlas(run, projection=projection)
    behaviours = [c for c in result.clusters if not c.degenerate]
    status(
        f"{len(result.behaviours) - 1} vectors → {len(behaviours)} behaviour clusters "
        f"({sum(c.repetitive for c in behaviours)} of them repetitive; "
        f"{sum(c.size for c in result.clusters if c.degenerate)} degenerate vectors kept apart); "
        f"generate {result.seconds['generate']:.0f} s, score {result.seconds['score']:.0f} s"
    )
    typer.echo(f"{'cluster':>7} {'size':>4} {'refuse':>6}  label / representative")
    for c in result.clusters:
        mark = " (like unsteered)" if c.unsteered_like else ""
        typer.echo(f"{c.id:>7} {c.size:>4} {c.refusal:>6.2f}  {c.label}{mark}: {c.completion[:100]!r}")
    typer.echo(f"shortlist (read in this order): {result.shortlist}")
    typer.echo(f"wrote {folder}")


@app.command(
    "enumerate", short_help="Behaviours found vs number of vectors, for several triaged runs clustered together."
)
def enumerate_cmd(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="triaged run folders (melbo triage RUN first)")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="folder for enumeration.json and the figure")],
    labels: Annotated[
        Optional[str], typer.Option("--labels", metavar="A,B,…", help="names of the runs [default: folder names]")
    ] = None,
    threshold: ThresholdOpt = TriageConfig().threshold,
) -> None:
    """Count, for each run, the distinct behaviour clusters its first 1…N vectors reach, all runs
    clustered together with one threshold so the counts compare (e.g. DCT vs MELBO vs random)."""
    from melbo_tl.analysis.figures import enumeration_figure, write_html
    from melbo_tl.artifacts import atomic_write_json
    from melbo_tl.evaluate.enumeration import enumerate_behaviours

    names = [s.strip() for s in labels.split(",")] if labels else None
    result = enumerate_behaviours(runs, labels=names, threshold=threshold)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "enumeration.json", result.to_dict())
    write_html(enumeration_figure(result), out / "enumeration.html")
    rows = result.table()
    keys = list(rows[0])
    typer.echo("  ".join(f"{k:>12}" for k in keys))
    for row in rows:
        typer.echo("  ".join(f"{'-' if row[k] is None else row[k]!s:>12}" for k in keys))
    typer.echo(f"{result.n_clusters} behaviour clusters over all runs (threshold {threshold}); wrote {out}")
