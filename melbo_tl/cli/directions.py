"""``melbo refusal-direction`` and ``melbo import-refusal-direction``: the supervised baseline.

``refusal-direction`` computes difference-in-means candidates on harmful/harmless training
prompts, scores them on validation prompts (Arditi et al.'s selection) and writes the chosen
direction as a run folder; the score table goes to stdout. ``import-refusal-direction`` converts
the public refusal_direction pipeline's ``direction.pt`` + ``direction_metadata.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, OutOpt, load, status
from melbo_tl.cli.options import config_command
from melbo_tl.optimize.configs import RefusalDirectionConfig


@app.command(
    "refusal-direction",
    short_help="Find the refusal direction (difference in means, Arditi et al.); writes a run folder.",
)
@config_command(RefusalDirectionConfig)
def refusal_direction_cmd(
    settings: dict,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="reuse the candidates and scores already in --out (same settings); only new thresholds or unscored candidates cost compute",
        ),
    ] = False,
) -> None:
    """Difference-in-means refusal direction: candidates per (layer, position) on training prompts,
    selection on validation prompts (ablation lowers refusal, addition induces it, low KL).

    Candidates and their scores are checkpointed in --out (candidates.safetensors,
    candidate_scores.json, run.json) after every candidate: --resume continues an interrupted run,
    or re-selects with other --kl-threshold/--induce-threshold without recomputing anything.
    """
    from melbo_tl.filenames import RUN_FILE

    cfg = RefusalDirectionConfig(**settings)
    if resume and not (out / RUN_FILE).is_file():
        raise ValueError(f"--resume: {out} has no run to resume; run without --resume first.")
    from melbo_tl.artifacts import load_run
    from melbo_tl.directions import NoDirectionError
    from melbo_tl.directions.io import CANDIDATES_FILE, SCORES_FILE, load_candidates
    from melbo_tl.directions.method import refusal_prompts
    from melbo_tl.directions.scores import CandidateScore, format_table
    from melbo_tl.training import train_to_folder

    prompts = refusal_prompts(cfg)
    if resume and (out / CANDIDATES_FILE).is_file():
        cands, _, done = load_candidates(out)
        status(
            f"resuming: {len(cands.layers)} layers × positions {cands.positions}, {len(done)} candidates already scored"
        )
    bridge = load(model, device=device, dtype=dtype)
    status(
        f"difference in means over {len(prompts['harmful_train'])} harmful / {len(prompts['harmless_train'])} harmless "
        f"prompts, selection on {len(prompts['harmful_val'])} / {len(prompts['harmless_val'])} validation prompts …"
    )
    try:
        folder = train_to_folder(bridge, "refusal-direction", prompts, cfg, out, resume=resume)
    except NoDirectionError as exc:
        typer.echo(format_table(exc.scores, exc.baseline))
        status(
            f"(scores kept in {out / SCORES_FILE}: rerun with --resume and other thresholds to re-select without recomputing)"
        )
        raise
    meta = load_run(folder).meta
    layer, pos = int(meta["layer"]), int(meta["pos"])
    scores = [CandidateScore(**s) for s in meta["scores"]]
    typer.echo(format_table(scores, meta["baseline"], chosen=(layer, pos)))
    c = next(s for s in scores if (s.layer, s.pos) == (layer, pos))
    typer.echo(
        f"chosen: layer {layer}, pos {pos} (hook {meta['hooks'][0]}), ‖r‖ = {c.norm:.3f}; "
        f"bypass {c.bypass:.3f} (harmful baseline {meta['baseline']['harmful']:.3f}), "
        f"induce {c.induce:.3f} (harmless baseline {meta['baseline']['harmless']:.3f}), kl {c.kl:.4f}"
    )
    per = f"{meta['seconds_per_candidate']:.1f} s per candidate; " if meta.get("seconds_per_candidate") else ""
    typer.echo(f"{per}wrote {out}")


@app.command(
    "import-refusal-direction", short_help="Import refusal_direction's direction.pt + metadata as a run folder."
)
def import_refusal_direction_cmd(
    direction: Annotated[
        Path, typer.Option("--direction", metavar="FILE", help="direction.pt (a d_model tensor saved with torch.save)")
    ],
    metadata: Annotated[
        Path, typer.Option("--metadata", metavar="FILE", help='direction_metadata.json ({"pos": int, "layer": int})')
    ],
    out: OutOpt,
    model: ModelOpt = None,
) -> None:
    """Convert the public refusal_direction pipeline's artifacts into a refusal-direction run folder."""
    from melbo_tl.directions import import_refusal_direction_artifacts, load_refusal_direction

    for path in (direction, metadata):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist.")
    bridge = load(model)
    folder = import_refusal_direction_artifacts(direction, metadata, bridge, out)
    _, layer, pos = load_refusal_direction(folder, bridge)
    typer.echo(f"imported layer {layer}, pos {pos} (hook blocks.{layer}.hook_resid_pre); wrote {folder}")
