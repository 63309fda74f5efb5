"""``melbo refusal-direction`` and ``melbo import-refusal-direction``: the supervised baseline.

``refusal-direction`` computes difference-in-means candidates on harmful/harmless training
prompts, scores them on validation prompts (Arditi et al.'s selection) and writes the chosen
direction as a run folder; the score table goes to stdout. ``import-refusal-direction`` converts
the public refusal_direction pipeline's ``direction.pt`` + ``direction_metadata.json``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from melbo_tl.cli.app import DEFAULT_MODEL_HELP, app

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
BUILTIN = ("harmful", "harmless")


def parse_int_list(spec: str, what: str) -> list[int]:
    """``"0-18"``, ``"2,5,9"``, ``"0-4,8"`` (layers) or ``"-5,-1"`` (positions) → a list of ints."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if m := _RANGE.match(part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"{what} range {part!r} runs backwards; write low-high.")
            out.extend(range(lo, hi + 1))
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(
                    f"{what} {spec!r}: expected integers or ranges like 0-18, separated by commas."
                ) from None
    if not out:
        raise ValueError(f"{what} {spec!r} names nothing.")
    return sorted(set(out), key=out.index)


def load_prompt_set(spec: str, split: str | None) -> tuple[list[str], str | None]:
    """Prompts from a built-in set, file or hf: spec. ``split`` None means "train" for the built-in
    sets (their "test" part is held out for evaluation) and everything for files; "all" = everything."""
    from melbo_tl.evaluate.datasets import load_prompts

    if split is None:
        split = "train" if spec in BUILTIN else "all"
    if split not in ("train", "test", "all"):
        raise ValueError(f"--split must be train, test or all, got {split!r}.")
    used = None if split == "all" else split
    return load_prompts(spec, split=used), used


def split_train_val(prompts: list[str], n_train: int, n_val: int, seed: int, what: str) -> tuple[list[str], list[str]]:
    """A deterministic (seeded) split: ``n_val`` validation prompts, up to ``n_train`` training ones."""
    from melbo_tl.evaluate.datasets import train_test_split

    if n_val < 1 or n_train < 1:
        raise ValueError("--n-train and --n-val must be at least 1.")
    if len(prompts) <= n_val:
        raise ValueError(
            f"{what}: {len(prompts)} prompts, but --n-val {n_val} leaves none for training; lower --n-val or add prompts."
        )
    val, rest = train_test_split(prompts, n_val, seed)
    if len(rest) < n_train:
        typer.echo(
            f"({what}: only {len(rest)} prompts left for training after {n_val} for validation; using all of them)",
            err=True,
        )
    return rest[:n_train], val


def _fingerprint(prompts: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]


@app.command(
    "refusal-direction",
    short_help="Find the refusal direction (difference in means, Arditi et al.); writes a run folder.",
)
def refusal_direction_cmd(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="run folder to write")],
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", metavar="MODEL", help=DEFAULT_MODEL_HELP, show_default=False)
    ] = None,
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
    candidate_scores.json) after every candidate: --resume continues an interrupted run, or
    re-selects with other --kl-threshold/--induce-threshold without recomputing anything.
    """
    from melbo_tl.cli.basic import load, status
    from melbo_tl.directions import (
        NoDirectionError,
        choose_direction,
        diff_in_means,
        save_refusal_direction,
        score_candidates,
    )
    from melbo_tl.directions.io import SCORES_FILE, load_candidates, save_candidates, save_scores
    from melbo_tl.directions.scores import format_table

    if resume and not (out / SCORES_FILE).is_file():
        raise ValueError(f"--resume: {out} has no {SCORES_FILE} to resume from; run without --resume first.")
    layer_list = parse_int_list(layers, "--layers") if layers is not None else None
    pos_list = parse_int_list(positions, "--positions") if positions is not None else None
    bad_all, bad_split = load_prompt_set(harmful, split)
    good_all, good_split = load_prompt_set(harmless, split)
    bad_train, bad_val = split_train_val(bad_all, n_train, n_val, seed, "--harmful")
    good_train, good_val = split_train_val(good_all, n_train, n_val, seed, "--harmless")
    bridge = load(model)
    L = int(bridge.cfg.n_layers)
    cand_layers = layer_list if layer_list is not None else [l for l in range(L) if l < max_layer_frac * L]
    settings = {
        "model": bridge.melbo_info.to_dict() if hasattr(bridge, "melbo_info") else str(bridge.cfg.model_name),
        "layers": cand_layers,
        "positions": pos_list,
        "max_layer_frac": max_layer_frac,
        "harmful_train": _fingerprint(bad_train),
        "harmless_train": _fingerprint(good_train),
        "harmful_val": _fingerprint(bad_val),
        "harmless_val": _fingerprint(good_val),
    }
    done: dict[tuple[int, int], Any] = {}
    if resume:
        cands, saved, previous = load_candidates(out)
        differ = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
        if differ:
            raise ValueError(
                f"--resume: the candidates in {out} were made with other settings ({', '.join(differ)} differ); "
                f"use the same model, prompts, --seed, --n-train/--n-val, --layers, --positions and --max-layer-frac, "
                f"or another --out."
            )
        done = {(s.layer, s.pos): s for s in previous}
        status(
            f"resuming: {len(cands.layers)} layers × positions {cands.positions}, {len(done)} candidates already scored"
        )
    else:
        status(
            f"difference in means over {len(bad_train)} harmful / {len(good_train)} harmless prompts, layers {cand_layers[0]}…{cand_layers[-1]} …"
        )
        started = time.perf_counter()
        cands = diff_in_means(
            bridge, bad_train, good_train, layers=cand_layers, positions=pos_list, batch_size=batch_size
        )
        status(
            f"candidates: {len(cands.layers)} layers × positions {cands.positions} in {time.perf_counter() - started:.1f} s"
        )
        save_candidates(out, cands, settings)
    status(f"scoring on {len(bad_val)} harmful / {len(good_val)} harmless validation prompts …")
    finished = dict(done)

    def checkpoint(score: Any) -> None:
        finished[(score.layer, score.pos)] = score
        save_scores(
            out, sorted(finished.values(), key=lambda s: (cands.layers.index(s.layer), cands.positions.index(s.pos)))
        )

    scored = score_candidates(
        bridge,
        cands,
        bad_val,
        good_val,
        max_layer_frac=max_layer_frac,
        batch_size=batch_size,
        done=done,
        on_score=checkpoint,
    )
    save_scores(out, scored.scores, scored.baseline)
    try:
        sel = choose_direction(cands, scored, kl_threshold=kl_threshold, induce_threshold=induce_threshold)
    except NoDirectionError as exc:
        typer.echo(format_table(exc.scores, exc.baseline))
        status(
            f"(scores kept in {out / SCORES_FILE}: rerun with --resume and other thresholds to re-select without recomputing)"
        )
        raise
    typer.echo(sel.table())
    c = sel.chosen
    prompts: dict[str, Any] = {
        "harmful": harmful,
        "harmless": harmless,
        "split": {"harmful": bad_split, "harmless": good_split},
        "seed": seed,
        "n_harmful_train": len(bad_train),
        "n_harmless_train": len(good_train),
        "harmful_val": bad_val,
        "harmless_val": good_val,
    }
    save_refusal_direction(
        sel, bridge, out, prompts=prompts, candidate_layers=cands.layers, candidate_positions=cands.positions
    )
    typer.echo(
        f"chosen: layer {sel.layer}, pos {sel.pos} (hook {sel.hook}), ‖r‖ = {c.norm:.3f}; "
        f"bypass {c.bypass:.3f} (harmful baseline {sel.baseline['harmful']:.3f}), "
        f"induce {c.induce:.3f} (harmless baseline {sel.baseline['harmless']:.3f}), kl {c.kl:.4f}"
    )
    per = f"{scored.seconds_per_candidate:.1f} s per candidate; " if scored.seconds_per_candidate else ""
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
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="run folder to write")],
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", metavar="MODEL", help=DEFAULT_MODEL_HELP, show_default=False)
    ] = None,
) -> None:
    """Convert the public refusal_direction pipeline's artifacts into a refusal-direction run folder."""
    from melbo_tl.cli.basic import load
    from melbo_tl.directions import import_refusal_direction_artifacts, load_refusal_direction

    for path in (direction, metadata):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist.")
    bridge = load(model)
    folder = import_refusal_direction_artifacts(direction, metadata, bridge, out)
    _, layer, pos = load_refusal_direction(folder, bridge)
    typer.echo(f"imported layer {layer}, pos {pos} (hook blocks.{layer}.hook_resid_pre); wrote {folder}")
