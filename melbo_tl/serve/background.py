"""Run the server in a background thread on a free local port (tests, benchmarks, docs scripts)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_in_thread(app: Any, *, timeout_s: float = 30.0) -> tuple[str, Any, threading.Thread]:
    """Start ``app`` under uvicorn in a daemon thread; return its base URL, the server and the thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server on port {port} did not start within {timeout_s:.0f} s")
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


def stop_thread_server(server: Any, thread: threading.Thread, *, timeout_s: float = 30.0) -> None:
    """Ask the server to exit and wait for its thread."""
    server.should_exit = True
    thread.join(timeout_s)
    if thread.is_alive():
        raise RuntimeError("the server did not shut down")
