"""``melbo serve``: an OpenAI-compatible server where every request carries its own steering."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melbo_tl.cli.app import app
from melbo_tl.cli.common import DEFAULT_DTYPE, DeviceOpt, DtypeOpt, ModelOpt, load, status


@app.command("serve", short_help="OpenAI-compatible server with per-request steering, and a live explorer page.")
def serve_cmd(
    model: ModelOpt = None,
    runs: Annotated[
        Optional[list[str]],
        typer.Option(
            "--runs",
            metavar="[NAME=]DIR",
            help="run folder (or a folder of run folders) whose vectors requests may name; repeat for several",
        ),
    ] = None,
    gguf: Annotated[
        Optional[list[str]],
        typer.Option("--gguf", metavar="NAME=FILE", help="register a llama.cpp control vector under NAME; repeatable"),
    ] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="port (0: any free port)")
    ] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, metavar="N", help="rows decoded together")] = 16,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, metavar="N", help="requests waiting beyond the batch (then 429)")
    ] = 64,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, metavar="N", help="largest max_tokens a request may ask for")
    ] = 512,
    max_scale: Annotated[
        float, typer.Option("--max-scale", min=0.0, metavar="S", help="largest |scale| a vector may get")
    ] = 100.0,
    window_ms: Annotated[
        float,
        typer.Option(
            "--window-ms", min=0.0, metavar="MS", help="an idle server waits this long to batch requests sent together"
        ),
    ] = 10.0,
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Serve MODEL over /v1/chat/completions, /v1/completions and /v1/models (streaming or not),
    with a `steering` field per request, /v1/steering/vectors to list and register vectors, and
    the explorer page at /. Ctrl-C (SIGINT/SIGTERM) lets running requests finish, then exits."""
    import logging

    import uvicorn

    from melbo_tl.serve import Limits, Settings, VectorStore, create_app, run_folders

    logger = logging.getLogger("melbo_tl.serve")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    folders = [entry for spec in runs or [] for entry in run_folders(spec)]
    controls = []
    for spec in gguf or []:
        name, sep, file = spec.partition("=")
        if not sep or not name or not Path(file).is_file():
            raise ValueError(f"--gguf {spec!r}: expected NAME=FILE with an existing GGUF file.")
        controls.append((name, file))
    bridge = load(model, device=device, dtype=dtype)
    store = VectorStore(bridge)
    for name, folder in folders:
        loaded = store.add_run(folder, name)
        status(f"run {name}: {loaded.describe()['n_vectors']} vectors ({loaded.method}) from {folder}")
    for name, file in controls:
        store.add_gguf(name, file)
        status(f"control vector {name}: {file}")
    info = bridge.melbo_info
    settings = Settings(
        model_id=info.spec, n_ctx=int(bridge.cfg.n_ctx), max_tokens=max_tokens, limits=Limits(max_scale=max_scale)
    )
    server_app = create_app(
        bridge, store, settings, max_batch=max_batch, max_queue=max_queue, window_s=window_ms / 1000
    )
    status(f"explorer: http://{host}:{port}/   API: http://{host}:{port}/v1 (model {info.spec!r})")
    uvicorn.run(server_app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(settings.grace_s))
