"""``melbo eval``: refusal (and judged alignment) rates of a run's vectors on a prompt set."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, VectorChoice, load, run_model, status


def _model_and_judge(judge: str, spec: str | None, run: Path, *, device: str | None, dtype: str) -> tuple[Any, Any]:
    """The evaluated model and the judge (cached in ``RUN/eval/judge_cache.jsonl``); a bad judge spec
    fails before the model loads, and a ``local:`` judge naming the evaluated model reuses it (no
    hooks are active while judging)."""
    from melbo_tl.evaluate.judges import CachedJudge, judge_from_spec

    local = judge.strip().startswith("local:")
    the_judge = None if local else judge_from_spec(judge)
    bridge = load(spec, device=device, dtype=dtype)
    if local:
        the_judge = judge_from_spec(judge, load=lambda name: bridge if name == spec else load(name))
    if the_judge is not None:
        the_judge = CachedJudge(the_judge, Path(run) / "eval" / "judge_cache.jsonl")
        status(f"judge: {the_judge.identity} (cache: {the_judge.path}, {len(the_judge)} scores)")
    return bridge, the_judge


def default_eval_name(prompts: str, scale: float) -> str:
    """``harmful``, ``my_prompts`` (a file's stem), ``hf-walledai-AdvBench``; ``-x<scale>`` unless 1."""
    if prompts.startswith("hf:"):
        stem = "hf-" + prompts[3:]
    else:
        stem = Path(prompts).stem if Path(prompts).suffix else prompts
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.") or "prompts"
    return stem if scale == 1.0 else f"{stem}-x{scale:g}"


PromptSetOpt = Annotated[
    str,
    typer.Option(
        "--prompts",
        metavar="SET",
        help="harmful | harmless | open_ended | a .json/.jsonl/.csv/.txt file | hf:<dataset>[:<split>][:<column>]",
    ),
]
EvalVectorsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--vectors",
        "--vector",
        metavar="SPEC",
        help="vectors to evaluate: all | I,J,A-B | top:N; repeatable [default: all]",
        show_default=False,
    ),
]
JudgeOpt = Annotated[
    str, typer.Option("--judge", metavar="JUDGE", help="none | openai:<base_url>:<model> | local:<model>")
]
SplitOpt = Annotated[
    Optional[str],
    typer.Option(
        "--split", metavar="SPLIT", help="train | test (built-in sets and files); the split of an hf: dataset"
    ),
]
NameOpt = Annotated[
    Optional[str],
    typer.Option(
        "--name",
        metavar="NAME",
        help="results go to RUN/eval/NAME.json [default: the prompt set's name, plus -x<scale>]",
    ),
]


@app.command("eval", short_help="Refusal and judged alignment rates of a run's vectors on a prompt set.")
def eval_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder (vectors.safetensors + run.json)")],
    prompts: PromptSetOpt,
    vectors: EvalVectorsOpt = None,
    scale: Annotated[
        float, typer.Option("--scale", metavar="S", help="multiply every vector (adapters: the radius) by this")
    ] = 1.0,
    judge: JudgeOpt = "none",
    limit: Annotated[
        Optional[int], typer.Option("--limit", min=1, metavar="N", help="use only the first N prompts")
    ] = None,
    split: SplitOpt = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, metavar="N", help="tokens to generate per answer")
    ] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="B", help="rows per forward pass")] = 16,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    no_unsteered: Annotated[bool, typer.Option("--no-unsteered", help="skip the unsteered baseline")] = False,
    name: NameOpt = None,
) -> None:
    """Answer every prompt under each chosen vector (and unsteered), print refusal rates with 95 %
    Wilson intervals (and judge scores), and write RUN/eval/NAME.json + NAME.generations.jsonl."""
    # Everything that can be checked without the model fails fast, before loading it.
    choices = [VectorChoice(spec) for spec in vectors or ["all"]]
    from melbo_tl.artifacts import load_run
    from melbo_tl.evaluate.datasets import load_prompts
    from melbo_tl.evaluate.harness import eval_paths, evaluate_run, format_table, save_eval, select_vectors
    from melbo_tl.evaluate.judges import CachedJudge
    from melbo_tl.runs import n_interventions

    loaded_run = load_run(run)
    indices = select_vectors(loaded_run, [i for c in choices for i in c.resolve(n_interventions(loaded_run))])
    texts = load_prompts(prompts, split=split, limit=limit)
    name = name or default_eval_name(prompts, scale)
    summary_path, _ = eval_paths(run, name)
    model_spec = run_model(run, model)
    bridge, the_judge = _model_and_judge(judge, model_spec, run, device=device, dtype=dtype)
    n_conditions = len(indices) + (0 if no_unsteered else 1)
    status(f"answering {len(texts)} prompts × {n_conditions} conditions, up to {max_new_tokens} tokens each …")
    started = time.perf_counter()
    result = evaluate_run(
        bridge,
        loaded_run,
        texts,
        vectors=indices,
        scale=scale,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        judge=the_judge,
        include_unsteered=not no_unsteered,
        progress=True,
    )
    status(f"done in {time.perf_counter() - started:.1f} s")
    if isinstance(the_judge, CachedJudge):
        status(f"judge calls: {the_judge.misses} new, {the_judge.hits} from cache")
    result.config.update(prompts=prompts, split=split, limit=limit, run=str(run))
    replaced = summary_path.is_file()
    path = save_eval(result, run, name)
    typer.echo(format_table(result))
    typer.echo(f"wrote {path}{' (replaced the previous one)' if replaced else ''}")
