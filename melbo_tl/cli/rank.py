"""``melbo rank``: rank a run's vectors by held-out accuracy on a task of prompts and answers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, VectorChoice, load, run_model, status
from melbo_tl.cli.options import config_command
from melbo_tl.evaluate.task_config import TaskConfig


@app.command("rank", short_help="Rank a run's vectors by exact-match accuracy on a task file (Wilson CIs).")
@config_command(TaskConfig, skip=("indices",))
def rank_cmd(
    settings: dict,
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    task: Annotated[
        Path, typer.Option("--task", metavar="FILE.jsonl", help="one JSON object a line: prompt, answer[, extract]")
    ],
    vectors: Annotated[
        str,
        typer.Option("--vectors", "--vector", metavar="SPEC", help="vectors to rank: all | I,J,A-B | top:N"),
    ] = "all",
    show: Annotated[int, typer.Option("--show", min=0, metavar="N", help="ranking rows to print (0: all)")] = 10,
    min_matches: Annotated[
        int,
        typer.Option(
            "--min-matches",
            min=1,
            metavar="K",
            help="answer changes (items with operands): wrong answers equal to a function before a vector shows it",
        ),
    ] = 5,
    alternative: Annotated[
        Optional[list[str]],
        typer.Option(
            "--alternative",
            metavar="EXPR",
            help="answer changes: an extra function of the operands to test, e.g. 'a1 * a2 * b1 * b2' (repeatable)",
        ),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Greedy-complete every task item unsteered and under each vector of RUN, score exact match
    of the extracted answer, and write RUN/tasks/<task name>/ranking.{jsonl,csv,md} (95 % Wilson
    intervals, unsteered baseline included); a rerun with the same settings resumes. When every
    item has ``operands``, the answer-change triage groups the vectors whose wrong answers
    consistently equal another function of them (RUN/tasks/<task name>/answer_change.{json,md})."""
    chosen, cfg = VectorChoice(vectors), TaskConfig(**settings)  # checks that need no model, first
    from melbo_tl.artifacts import load_run
    from melbo_tl.evaluate.answer_change import AnswerChangeConfig
    from melbo_tl.evaluate.tasks import load_task, rank_by_task

    items = load_task(task)  # bad rows and settings fail before the model loads
    changes = AnswerChangeConfig(min_matches=min_matches, alternatives=tuple(alternative or ()))
    if vectors != "all":
        cfg = cfg.replace(indices=chosen.resolve(len(load_run(run).vectors)))
    bridge = load(run_model(run, model), device=device, dtype=dtype)
    status(f"ranking {run} on {len(items)} items of {task}")
    result = rank_by_task(bridge, run, items, cfg, name=task.stem, answer_change=changes)
    typer.echo(result.markdown(top=None if show == 0 else show), nl=False)
    if result.answer_change is not None:
        typer.echo("\n" + result.answer_change.markdown(), nl=False)
    better = result.better_than_baseline()
    status(
        f"{len(better)} vector(s) beat the unsteered baseline ({result.baseline.accuracy:.3f}) with "
        f"non-overlapping intervals; generated in {result.seconds:.0f} s"
    )
    typer.echo(f"wrote {result.folder}")
