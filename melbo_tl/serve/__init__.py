"""``melbo serve``: steering chosen per request over an OpenAI-compatible HTTP API.

:mod:`~melbo_tl.serve.engine` batches concurrent requests into one forward pass per step, each
row steered by its own vectors (:mod:`~melbo_tl.serve.rows`), rows leaving and joining as they
finish and arrive (:mod:`~melbo_tl.serve.batch`); :mod:`~melbo_tl.serve.spec` reads a request's
``steering`` field; :mod:`~melbo_tl.serve.store` holds the runs and named vectors requests may
name; :mod:`~melbo_tl.serve.app` is the FastAPI app with the explorer page at ``/``.
Needs the ``serve`` extra (fastapi, uvicorn, sse-starlette).
"""

from melbo_tl.serve.app import create_app
from melbo_tl.serve.completions import Settings
from melbo_tl.serve.engine import Engine
from melbo_tl.serve.spec import Limits, RequestError
from melbo_tl.serve.store import VectorStore, run_folders

__all__ = ["Engine", "Limits", "RequestError", "Settings", "VectorStore", "create_app", "run_folders"]
