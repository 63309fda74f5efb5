"""What every command shares: option types, loading a model, status lines, run outputs.

One option style (``Annotated`` with ``typer.Option``); results go to stdout, progress and
status lines to stderr, so ``melbo generate … > out.txt`` keeps only the answers. Nothing here
imports torch at module level: ``melbo --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from melbo_tl.cli.app import DEFAULT_MODEL_HELP
from melbo_tl.config import parse_int_list

if TYPE_CHECKING:
    from melbo_tl.distributed import RayCluster, WorkerModel
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
VectorsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--vectors",
        "--vector",
        metavar="SPEC",
        help="which vectors of the run: all | I,J,A-B (indices from 0) | top:N (the first N, in rank order)",
        show_default=False,
    ),
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
) -> tuple[WorkerModel, RayCluster] | None:
    """With ``--ray``: what each worker loads and the cluster to use (melbo_tl.distributed, and
    so Ray, is imported only here); without it None, and nothing is imported."""
    if ray is None:
        if workers is not None or cpus != 1.0 or gpus != 0.0:
            raise ValueError("--ray-workers, --ray-cpus and --ray-gpus size a --ray run; give --ray too.")
        return None
    from melbo_tl.distributed import RayCluster, WorkerModel
    from melbo_tl.models import DEFAULT_MODEL

    check_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError(f"Give --device ({device}) or --device-map ({device_map}), not both.")
    status(f"--ray {ray}: the units run on Ray workers, each loading {model or DEFAULT_MODEL} itself")
    worker = WorkerModel(model or DEFAULT_MODEL, device=device, dtype=dtype, device_map=device_map_value(device_map))
    return worker, RayCluster(address=ray, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


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


def run_model(run_dir: Path | None, model: str | None) -> str | None:
    """``--model`` where given, else the model the run in ``run_dir`` was made with (read from its
    run.json without loading anything; a folder that is no run is an error naming what it lacks)."""
    if run_dir is None or model is not None:
        return model
    import json

    from melbo_tl.filenames import RUN_FILE, VECTORS_FILE

    meta = Path(run_dir) / RUN_FILE
    if not meta.is_file() or not (Path(run_dir) / VECTORS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it needs {RUN_FILE} and {VECTORS_FILE}.")
    return (json.loads(meta.read_text()).get("model") or {}).get("spec")


def steering_from_options(run: Path | None, vectors: str | None, scale: float | None) -> tuple[Any, list[Intervention]]:
    """The run folder and intervention the --run/--vectors/--scale options ask for (none without
    --run). The spec is parsed before anything loads, so a bad index fails fast."""
    if run is None:
        if vectors is not None or scale is not None:
            raise ValueError("--vectors and --scale choose a vector from a run folder; give --run DIR too.")
        return None, []
    index = VectorChoice(vectors, default="0").one()
    from melbo_tl.artifacts import load_run
    from melbo_tl.runs import intervention_from_run

    loaded = load_run(run)
    return loaded, [intervention_from_run(loaded, index, scale=1.0 if scale is None else scale)]


def check_steering(
    model: Any, run_dir: Path | None, run: Any, steering: list[Intervention], vectors: str | None
) -> None:
    """Check the run fits the loaded model (width, identity, hook names) and say what steers."""
    if run is None:
        return
    from melbo_tl.artifacts import check_fits
    from melbo_tl.steering.interventions import describe

    check_fits(run, model)
    for steer in steering:
        steer.hooks(model)
        status(f"steering with {run_dir} #{vectors or 0} ({run.meta.get('method', '?')}): {describe(steer)}")


class VectorChoice:
    """A parsed ``--vectors`` spec: ``all``, ``top:N`` or explicit indices (never negative).
    Parsing needs no run; :meth:`resolve` checks the indices against the run's count."""

    def __init__(self, spec: str | None, *, default: str = "all") -> None:
        text = (spec if spec is not None else default).strip()
        self.spec, self.top, self.indices = text, None, None
        if text == "all":
            return
        if text.startswith("top:"):
            try:
                self.top = int(text[4:])
            except ValueError:
                raise ValueError(f"--vectors {text!r}: top:N needs a whole number N ≥ 1.") from None
            if self.top < 1:
                raise ValueError(f"--vectors {text!r}: top:N needs N ≥ 1.")
            return
        indices = parse_int_list(text, "--vectors")
        negative = [i for i in indices if i < 0]
        if negative:
            raise ValueError(
                f"--vectors {text!r}: {negative} — vector indices count from 0 and negative ones are refused "
                "(write the index, e.g. 7, or top:N for the first N)."
            )
        self.indices = indices

    def resolve(self, n: int) -> list[int]:
        """The chosen indices among a run's ``n`` vectors (an index ≥ n is an error)."""
        if self.indices is None:
            return list(range(n if self.top is None else min(self.top, n)))
        for i in self.indices:
            if i >= n:
                raise ValueError(f"Vector index {i} is out of range: this run has {n} vectors (valid 0…{n - 1}).")
        return list(self.indices)

    def one(self) -> int:
        """The single index of a command that applies one vector."""
        if self.indices is None or len(self.indices) != 1:
            raise ValueError(f"--vectors {self.spec!r}: this command applies one vector; give one index, e.g. 0.")
        return self.indices[0]


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
