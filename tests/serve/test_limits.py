"""Limits and lifecycle: queue length, batch size, clients that leave, and a clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from melbo_tl.serve.background import free_port
from tests.serve.conftest import start, stop

ASK = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


@pytest.fixture
def small(tiny_model):
    """A server with room for 2 rows and 1 waiting request, and long answers allowed."""
    from melbo_tl.serve import Settings, VectorStore, create_app

    app = create_app(tiny_model, VectorStore(tiny_model), Settings(model_id="tiny", n_ctx=512, max_tokens=450),
                     max_batch=2, max_queue=1)  # fmt: skip
    url, server, thread = start(app)
    yield url, app.state.engine
    stop(server, thread)


def _wait_idle(engine, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while engine.load() != {"active_rows": 0, "queued_requests": 0}:
        assert time.monotonic() < deadline, engine.load()
        time.sleep(0.01)


def test_queue_full_is_429_and_the_queued_request_still_runs(small):
    url, engine = small
    gate = threading.Event()
    engine.call(lambda model: gate.wait(30))  # hold the engine between two steps
    time.sleep(0.05)
    with ThreadPoolExecutor(2) as pool:
        queued = pool.submit(
            httpx.post, f"{url}/v1/chat/completions", json={"model": "tiny", **ASK, "max_tokens": 4}, timeout=60
        )
        deadline = time.monotonic() + 5
        while engine.load()["queued_requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", **ASK, "max_tokens": 4}, timeout=60)
        gate.set()
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert queued.result().status_code == 200


def test_batch_never_exceeds_max_batch(small):
    url, engine = small
    body = {"model": "tiny", **ASK, "max_tokens": 60}
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for i in range(3):  # one queue slot: send the next once the previous one is in the batch
            futures.append(pool.submit(httpx.post, f"{url}/v1/chat/completions", json={**body, "seed": i}, timeout=60))
            deadline = time.monotonic() + 5
            while i < 2 and engine.load()["active_rows"] < i + 1:
                assert time.monotonic() < deadline
                time.sleep(0.002)
        assert [f.result().status_code for f in futures] == [200, 200, 200]
    assert engine.stats["max_rows"] == 2


def test_a_stream_closed_early_leaves_the_batch(small):
    url, engine = small
    before = engine.stats["tokens"]
    body = {"model": "tiny", **ASK, "max_tokens": 450, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first token arrived: hang up
    _wait_idle(engine)
    assert engine.stats["tokens"] - before < 450


def test_a_non_streaming_client_that_gives_up_is_dropped(small):
    url, engine = small
    before = engine.stats["tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", **ASK, "max_tokens": 450}, timeout=0.2)
    _wait_idle(engine, 10)
    assert engine.stats["tokens"] - before < 450


def _serve(model_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "melbo_tl.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--max-tokens", "400", "--dtype", "float32"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_up(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "melbo serve did not come up"
        time.sleep(0.2)


def test_sigterm_lets_the_running_request_finish_then_exits_cleanly(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tiny_model_dir, port)
    try:
        _wait_up(proc, url)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        chunks: list[dict] = []
        body = {"model": model, **ASK, "max_tokens": 300, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
                    if len(chunks) == 3:
                        proc.send_signal(signal.SIGTERM)  # mid-answer
                        break
            rest = list(lines)
        assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest
        finals = [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
        assert finals[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM
        assert proc.wait(60) in (0, -signal.SIGTERM)
        log = proc.stdout.read() if proc.stdout else ""
        assert "Traceback" not in log
        assert "engine stopped" in log and "Application shutdown complete" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
