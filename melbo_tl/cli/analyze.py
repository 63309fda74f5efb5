"""``melbo analyze`` and ``melbo report``: interpret a run folder and write its report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, VectorChoice, load, run_model


@app.command("analyze", short_help="Similarity, lens, attribution, mediation and token views of a run's vectors.")
def analyze_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder (vectors.safetensors + run.json)")],
    against: Annotated[
        Optional[Path],
        typer.Option("--against", metavar="REFUSAL_RUN", help="refusal-direction run folder to compare with"),
    ] = None,
    compare: Annotated[
        Optional[list[Path]],
        typer.Option("--with", metavar="RUN", help="another run whose vectors join the comparison (repeatable)"),
    ] = None,
    prompts: Annotated[
        str, typer.Option("--prompts", metavar="SET", help="prompts the effects are measured on (built-in set or file)")
    ] = "harmful",
    split: Annotated[
        str, typer.Option("--split", metavar="SPLIT", help="train | test part of the prompt set")
    ] = "test",
    n_prompts: Annotated[int, typer.Option("--n-prompts", min=1, metavar="N", help="how many prompts")] = 8,
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", min=0, metavar="N", help="completion length in mediation (0: log-odds only)"),
    ] = 32,
    mediate_top: Annotated[
        int,
        typer.Option(
            "--mediate-top", min=1, metavar="K", help="mediation for the K most refusal-lowering vectors of RUN"
        ),
    ] = 1,
    vectors: Annotated[
        str,
        typer.Option(
            "--vectors",
            "--vector",
            metavar="SPEC",
            help="which of RUN's vectors: all | I,J,A-B (e.g. a triage shortlist) | top:N (the first N, rank order)",
        ),
    ] = "all",
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Compute every analysis of RUN (against a refusal direction) into RUN/analysis/ (JSON, CSV, figures).

    Finished steps are kept: rerunning with the same options resumes an interrupted analysis.
    """
    chosen = VectorChoice(vectors)  # every check that needs no model, before loading it
    spec = run_model(run, model)
    for folder in [*(compare or [])] + ([against] if against else []):
        run_model(folder, None)
    from melbo_tl.analysis.run_analysis import AnalysisSettings, analyze_run

    settings = AnalysisSettings(
        prompts=prompts,
        split=split,
        n_prompts=n_prompts,
        max_new_tokens=max_new_tokens,
        mediate_top=mediate_top,
        top=chosen.top,
        vectors=chosen.indices,
    )
    bridge = load(spec, device=device, dtype=dtype)
    out = analyze_run(bridge, run, against=against, compare=compare or [], settings=settings)
    typer.echo(f"wrote {out}")


@app.command("report", short_help="Write RUN/report.html (self-contained, opens offline).")
def report_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    screenshot: Annotated[
        Optional[Path],
        typer.Option(
            "--screenshot", metavar="PNG", help="also render the page in headless Chromium and save a screenshot"
        ),
    ] = None,
) -> None:
    """One HTML page with the run's settings, losses, generations and its analyses."""
    from melbo_tl.analysis.report import write_report

    out = write_report(run)
    typer.echo(f"wrote {out}")
    if screenshot is not None:
        from melbo_tl.analysis.browser import check_page

        check = check_page(out, screenshot=screenshot)
        problems = check.console_errors + check.page_errors + check.external_requests
        typer.echo(
            f"screenshot: {screenshot} ({'renders cleanly' if check.ok else 'problems: ' + '; '.join(problems[:5])})"
        )
