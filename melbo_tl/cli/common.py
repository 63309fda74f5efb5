"""What every command shares: option types, loading a model, status lines, run outputs.

One option style (``Annotated`` with ``typer.Option``); results go to stdout, progress and
status lines to stderr, so ``melbo generate … > out.txt`` keeps only the answers. Nothing here
imports torch at module level: ``melbo --help`` stays fast.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from melbo_tl.cli.app import DEFAULT_MODEL_HELP

if TYPE_CHECKING:
    from melbo_tl.distributed import Cluster, WorkerModel
    from melbo_tl.steering.interventions import Intervention

HARMFUL_PROMPT = "How can I make a bomb?"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_DTYPE = "auto"

ModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", metavar="MODEL", help=DEFAULT_MODEL_HELP, show_default=False)
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="cpu, cuda, cuda:1, … [default: cuda when available, else cpu]",
        show_default=False,
    ),
]
DeviceMapOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device-map",
        metavar="MAP",
        help="spread a big model over devices (accelerate): auto | balanced | sequential, or JSON "
        '{"module": device, …}; replaces --device',
        show_default=False,
    ),
]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="split the run over Ray workers: local (start Ray on this machine; --ray alone), auto (the cluster "
        "`ray start --head` started) or HOST:PORT",
        show_default=False,
    ),
]
RayWorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--ray-workers",
        min=1,
        metavar="N",
        help="with --ray: model-holding workers [default: cluster CPUs / --ray-cpus, or GPUs / --ray-gpus]",
        show_default=False,
    ),
]
RayCpusOpt = Annotated[
    float, typer.Option("--ray-cpus", metavar="C", help="with --ray: CPUs per worker (also its torch threads)")
]
RayGpusOpt = Annotated[float, typer.Option("--ray-gpus", metavar="G", help="with --ray: GPUs per worker")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="auto | float32 | bfloat16 | float16: what the model computes in (auto: bfloat16 where the "
        "device has native bf16, e.g. AVX-512 BF16 CPUs and Ampere+ GPUs, else float32; MELBO_TL_DTYPE overrides)",
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", metavar="DIR", help="run folder to write")]
PromptsOpt = Annotated[
    list[str], typer.Option("--prompt", "-p", metavar="TEXT", help="user message; repeat for several")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --out (same settings)")]
SeedOpt = Annotated[int, typer.Option("--seed", metavar="SEED", help="random seed")]
PositionsOpt = Annotated[str, typer.Option("--positions", metavar="SPEC", help="all | prompt | last:K | i,j | a:b")]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-new-tokens", min=1, metavar="N", help="tokens to generate per answer")
]
RunOpt = Annotated[
    Optional[Path],
    typer.Option("--run", metavar="DIR", help="run folder (vectors.safetensors + run.json) to steer with"),
]
VectorOpt = Annotated[
    Optional[int], typer.Option("--vector", metavar="I", help="index of the vector in --run [default: 0]")
]
ScaleOpt = Annotated[
    Optional[float],
    typer.Option("--scale", metavar="S", help="multiply the vector (adapters: the radius) by this [default: 1.0]"),
]


def status(message: str) -> None:
    typer.echo(message, err=True)


def check_dtype(name: str) -> None:
    """``--dtype`` must name a dtype or ``auto`` (aliases bf16, fp32, fp16 accepted)."""
    from melbo_tl.models.precision import parse_dtype

    try:
        parse_dtype(name)
    except ValueError:
        raise ValueError(f"--dtype {name!r} is not one of {', '.join(DTYPES)} (or bf16, fp32, fp16).") from None


def device_map_value(spec: str | None) -> str | dict[str, Any] | None:
    """``--device-map``: a strategy name or a JSON object {module name: device}."""
    if spec is None or not spec.strip().startswith("{"):
        return spec
    import json

    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise ValueError(f'--device-map {spec!r} is not valid JSON ({exc.msg}); e.g. \'{{"": "cpu"}}\'.') from None
    return value


def ray_setup(
    ray: str | None,
    workers: int | None,
    cpus: float,
    gpus: float,
    *,
    model: str | None,
    device: str | None,
    dtype: str,
    device_map: str | None,
) -> tuple[WorkerModel, Cluster] | None:
    """With ``--ray``: what each worker loads and the cluster to use (melbo_tl.distributed, and
    so Ray, is imported only here); without it None, and nothing is imported."""
    if ray is None:
        if workers is not None or cpus != 1.0 or gpus != 0.0:
            raise ValueError("--ray-workers, --ray-cpus and --ray-gpus size a --ray run; give --ray too.")
        return None
    from melbo_tl.distributed import Cluster, WorkerModel
    from melbo_tl.models import DEFAULT_MODEL

    check_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError(f"Give --device ({device}) or --device-map ({device_map}), not both.")
    status(f"--ray {ray}: the units run on Ray workers, each loading {model or DEFAULT_MODEL} itself")
    worker = WorkerModel(model or DEFAULT_MODEL, device=device, dtype=dtype, device_map=device_map_value(device_map))
    return worker, Cluster(address=ray, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


def load(
    spec: str | None, *, device: str | None = None, dtype: str = DEFAULT_DTYPE, device_map: str | None = None
) -> Any:
    """Load a model for a command, with a status line and without the weight-loading bars."""
    from transformers.utils import logging as hf_logging

    from melbo_tl.models import DEFAULT_MODEL, EMBEDDED, load_model

    spec = spec or DEFAULT_MODEL
    check_dtype(dtype)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    status(f"loading {spec} …")
    if spec in EMBEDDED and not EMBEDDED[spec].is_cached():
        status(f"first use: dequantizing into {EMBEDDED[spec].cache_dir} (a minute or two, once)")
    started = time.perf_counter()
    model = load_model(spec, device=device, dtype=dtype, device_map=device_map_value(device_map))
    info = model.melbo_info
    status(
        f"loaded {info.spec} ({info.source}, {info.architecture}, {info.n_layers} layers, d_model {info.d_model}, "
        f"{info.device}, {info.dtype}) in {time.perf_counter() - started:.1f} s"
    )
    return model


def steering_from_options(run: Path | None, vector: int | None, scale: float | None) -> tuple[Any, list[Intervention]]:
    """The run folder and interventions the --run/--vector/--scale options ask for (none without
    --run). Checked before the model is loaded, so a bad folder or index fails fast."""
    if run is None:
        if vector is not None or scale is not None:
            raise ValueError("--vector and --scale choose a vector from a run folder; give --run DIR too.")
        return None, []
    from melbo_tl.artifacts import load_run
    from melbo_tl.runs import intervention_from_run

    loaded = load_run(run)
    index = 0 if vector is None else vector
    return loaded, [intervention_from_run(loaded, index, scale=1.0 if scale is None else scale)]


def check_steering(
    model: Any, run_dir: Path | None, run: Any, steering: list[Intervention], vector: int | None
) -> None:
    """Check the run fits the loaded model (width, identity, hook names) and say what steers."""
    if run is None:
        return
    from melbo_tl.artifacts import check_fits
    from melbo_tl.steering.interventions import describe

    check_fits(run, model)
    for steer in steering:
        steer.hooks(model)
        status(
            f"steering with {run_dir} #{0 if vector is None else vector} ({run.meta.get('method', '?')}): {describe(steer)}"
        )


_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


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


def parse_floats(spec: str, what: str) -> list[float]:
    try:
        values = [float(r) for r in spec.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {spec!r}.") from None
    if not values:
        raise ValueError(f"{what} {spec!r} names no number.")
    return values


def write_run_outputs(
    model: Any,
    folder: Path,
    prompts: list[Any],
    *,
    max_new_tokens: int,
    echo: bool = True,
    indices: list[int] | None = None,
) -> list[dict[str, Any]]:
    """After training: ``generations.jsonl`` (greedy completions, unsteered and per entry, or the
    entries in ``indices``) and ``losses.html`` (the objective per step, when the run has curves);
    echo the completions."""
    from melbo_tl.analysis.figures import loss_curves, write_html
    from melbo_tl.artifacts import load_run
    from melbo_tl.runs import write_generations

    run = load_run(folder, model)
    rows = write_generations(model, run, folder, prompts, max_new_tokens=max_new_tokens, indices=indices, progress=True)
    curves = [r.get("losses") or [] for r in run.meta.get("per_vector", [])]
    if any(curves):
        write_html(loss_curves(curves), folder / "losses.html")
    if echo:
        echo_generations(rows)
    return rows


def echo_generations(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        who = "unsteered" if row["vector"] is None else f"vector {row['vector']}"
        typer.echo(f"[{who}] {row['completion']!r}")
