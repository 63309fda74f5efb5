"""The FastAPI app: OpenAI-compatible routes, the steering-vector routes, the explorer page.

Every error leaves as JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status naming the field at fault (400 bad value, 404 unknown model or route, 429
queue full, 503 shutting down); nothing a client sends can take the server down.

>>> app = create_app(model, VectorStore(model), Settings(model_id="qwen", n_ctx=32768))
>>> uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from melbo_tl.models.loading import model_info
from melbo_tl.serve.completions import Settings, collect, prepare, stream, submit
from melbo_tl.serve.engine import Engine, QueueFull, ShuttingDown
from melbo_tl.serve.inspect import explorer_html, inspect_vector
from melbo_tl.serve.schemas import ChatRequest, CompletionRequest, RegisterRequest, error_body, now
from melbo_tl.serve.spec import RequestError
from melbo_tl.serve.store import Component, VectorStore, as_vector

log = logging.getLogger("melbo_tl.serve")


def _param(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a dotted field name: ("body", "messages", 0, "role") → messages[0].role."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc), exc.param or None, kind), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        param = _param(tuple(first.get("loc", ("body",))))
        if first.get("type") == "json_invalid":
            param, message = "body", f"body: malformed JSON ({first.get('ctx', {}).get('error', first['msg'])})"
        else:
            message = f"{param}: {first['msg']}"
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), None, kind), status_code=exc.status_code)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(error_body(f"{exc} Retry later.", None, "rate_limit_error"), status_code=429)

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, exc: ShuttingDown) -> JSONResponse:
        return JSONResponse(error_body(str(exc), None, "server_error"), status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}: {exc}", None, "server_error"), status_code=500
        )


def create_app(model: Any, store: VectorStore, settings: Settings, *, max_batch: int = 16, max_queue: int = 64,
               window_s: float = 0.01) -> FastAPI:  # fmt: skip
    """The server for ``model``: an engine (started with the app, stopped on shutdown) and its routes."""
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue, window_s=window_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # sse-starlette would cut every stream at the first shutdown signal; instead uvicorn lets
        # running requests finish (up to its graceful timeout) before the engine stops.
        AppStatus.disable_automatic_graceful_drain()
        AppStatus.should_exit = False
        engine.start()
        log.info("serving %s (max batch %d, queue %d)", settings.model_id, max_batch, max_queue)
        yield
        await run_in_threadpool(engine.stop, settings.grace_s)
        log.info("engine stopped")

    app = FastAPI(title="melbo serve", lifespan=lifespan)
    app.state.engine, app.state.store, app.state.settings = engine, store, settings
    _errors(app)

    async def complete(request: Request, req: ChatRequest | CompletionRequest) -> Any:
        prepared = prepare(req, engine, store, settings)
        job, events = submit(engine, prepared)
        if prepared.stream:
            return EventSourceResponse(stream(job, events, prepared, settings), ping=15)
        return await collect(request, job, events, prepared, settings)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, req: ChatRequest) -> Any:
        return await complete(request, req)

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest) -> Any:
        return await complete(request, req)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        info = model_info(model)
        entry = {"id": settings.model_id, "object": "model", "created": now(), "owned_by": "melbo_tl"}
        return {
            "object": "list",
            "data": [{**entry, "d_model": info.d_model, "n_layers": info.n_layers, "dtype": info.dtype}],
        }

    @app.get("/v1/steering/vectors")
    async def list_vectors() -> dict[str, Any]:
        return store.describe()

    @app.post("/v1/steering/vectors", status_code=201)
    async def register_vector(req: RegisterRequest) -> dict[str, Any]:
        return await run_in_threadpool(_register, store, req)

    @app.get("/v1/steering/inspect")
    async def inspect(run: str | None = None, index: int = 0, name: str | None = None) -> dict[str, Any]:
        if (run is None) == (name is None):
            raise RequestError("run", "give ?run=NAME&index=I or ?name=NAME")
        try:
            (store.run_vector(run, index) if run is not None else store.named_vector(name or ""))
        except KeyError as exc:
            raise RequestError("run" if run is not None else "name", exc.args[0], 404) from None
        except (IndexError, ValueError) as exc:
            raise RequestError("index", str(exc.args[0]) if exc.args else str(exc)) from None
        future = engine.call(
            lambda m: inspect_vector(m, store, run=run, index=index, name=name, max_scale=settings.limits.max_scale)
        )
        return await asyncio.wrap_future(future)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_id, **engine.load(), "stats": dict(engine.stats)}

    @app.get("/", response_class=HTMLResponse)
    async def explorer() -> str:
        return explorer_html()

    return app


def _register(store: VectorStore, req: RegisterRequest) -> dict[str, Any]:
    """Add a named vector (or a whole run) from a run folder, a GGUF control vector, or data."""
    sources = [k for k in ("run_dir", "gguf", "data") if getattr(req, k) is not None]
    if len(sources) != 1:
        raise RequestError(
            "body", "give exactly one source: 'run_dir' (+ 'index'), 'gguf' or 'data' (+ 'site'/'layers')"
        )
    whole_run = req.run_dir is not None and req.index is None
    if req.name in (store.runs if whole_run else store.named):
        raise RequestError("name", f"{req.name!r} is taken already; choose another name")
    field = sources[0]
    try:
        if req.run_dir is not None:
            if whole_run:
                return {"run": store.add_run(req.run_dir, req.name).describe()}
            return {"vector": store.add_from_run(req.name, req.run_dir, req.index).describe()}
        if req.gguf is not None:
            return {"vector": store.add_gguf(req.name, req.gguf).describe()}
        vector = as_vector(req.data, store.d_model)
        if (req.site is None) == (req.layers is None):
            raise RequestError(
                "site", "inline data needs a 'site' (hook name) or 'layers' (block indices), one of them"
            )
        field = "site" if req.site is not None else "layers"
        sites = (
            [req.site] if req.site is not None else [f"blocks.{layer}.hook_resid_post" for layer in req.layers or []]
        )
        return {"vector": store.add_named(req.name, [Component(s, vector) for s in sites], {"data": True}).describe()}
    except FileNotFoundError as exc:
        raise RequestError(sources[0], str(exc)) from None
    except IndexError as exc:
        raise RequestError("index", str(exc.args[0])) from None
    except ValueError as exc:
        raise RequestError(field, str(exc)) from None
