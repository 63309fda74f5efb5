"""``melbo refusal-direction`` and ``melbo import-refusal-direction``: the supervised baseline.

``refusal-direction`` computes difference-in-means candidates on harmful/harmless training
prompts, scores them on validation prompts (Arditi et al.'s selection) and writes the chosen
direction as a run folder; the score table goes to stdout. ``import-refusal-direction`` converts
the public refusal_direction pipeline's ``direction.pt`` + ``direction_metadata.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, OutOpt, load, parse_int_list, status


@app.command(
    "refusal-direction",
    short_help="Find the refusal direction (difference in means, Arditi et al.); writes a run folder.",
)
def refusal_direction_cmd(
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    harmful: Annotated[
        str,
        typer.Option(
            "--harmful",
            metavar="SET|FILE",
            help="harmful prompts: built-in set, .txt/.json/.jsonl/.csv file or hf:dataset",
        ),
    ] = "harmful",
    harmless: Annotated[
        str, typer.Option("--harmless", metavar="SET|FILE", help="harmless prompts (as --harmful)")
    ] = "harmless",
    split: Annotated[
        Optional[str],
        typer.Option(
            "--split",
            metavar="train|test|all",
            help="part of the prompt sets to use [default: train for built-in sets, all for files]",
            show_default=False,
        ),
    ] = None,
    n_train: Annotated[
        int, typer.Option("--n-train", metavar="N", help="training prompts per set (difference in means)")
    ] = 128,
    n_val: Annotated[int, typer.Option("--n-val", metavar="N", help="validation prompts per set (selection)")] = 32,
    layers: Annotated[
        Optional[str],
        typer.Option(
            "--layers",
            metavar="SPEC",
            help="candidate layers, e.g. 0-18 or 4,8,12 [default: all below max-layer-frac]",
            show_default=False,
        ),
    ] = None,
    positions: Annotated[
        Optional[str],
        typer.Option(
            "--positions",
            metavar="SPEC",
            help="candidate positions (negative offsets), e.g. -5,-1 [default: the template tokens after the instruction]",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the train/validation split")] = 0,
    max_layer_frac: Annotated[
        float, typer.Option("--max-layer-frac", help="only layers ℓ < frac·n_layers are candidates")
    ] = 0.8,
    kl_threshold: Annotated[
        float, typer.Option("--kl-threshold", help="maximum KL on harmless prompts when ablating")
    ] = 0.1,
    induce_threshold: Annotated[
        float,
        typer.Option("--induce-threshold", help="adding the vector must raise harmless refusal log-odds above this"),
    ] = 0.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="prompts per forward pass")] = 16,
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
    from melbo_tl.artifacts import load_run
    from melbo_tl.directions import NoDirectionError
    from melbo_tl.directions.io import CANDIDATES_FILE, SCORES_FILE, load_candidates
    from melbo_tl.directions.method import RefusalDirectionConfig, refusal_prompts
    from melbo_tl.directions.scores import CandidateScore, format_table
    from melbo_tl.filenames import RUN_FILE
    from melbo_tl.training import train_to_folder

    cfg = RefusalDirectionConfig(
        harmful=harmful, harmless=harmless, split=split, n_train=n_train, n_val=n_val,
        layers=tuple(parse_int_list(layers, "--layers")) if layers is not None else None,
        positions=tuple(parse_int_list(positions, "--positions")) if positions is not None else None,
        seed=seed, max_layer_frac=max_layer_frac, kl_threshold=kl_threshold, induce_threshold=induce_threshold,
        batch_size=batch_size,
    )  # fmt: skip
    if resume and not (out / RUN_FILE).is_file():
        raise ValueError(f"--resume: {out} has no run to resume; run without --resume first.")
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
