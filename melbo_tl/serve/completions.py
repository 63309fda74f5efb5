"""Chat and text completions: a checked request → engine rows → an OpenAI response or SSE stream.

Everything that can be wrong with a request (model name, lengths, steering) is found here,
before the request is queued; the engine only ever sees rows it can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.prompts import format_chat
from melbo_tl.serve.engine import Delta, Engine, Event, Failed, Finished, Job, RowRequest, Sampling
from melbo_tl.serve.rows import RowSteering
from melbo_tl.serve.schemas import ChatRequest, CompletionRequest, error_body, new_id, now, usage
from melbo_tl.serve.spec import Limits, RequestError, parse_steering
from melbo_tl.serve.store import VectorStore

DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there


@dataclass(frozen=True)
class Settings:
    """What the server allows. ``max_tokens`` caps a request's ``max_tokens`` (``default_tokens``
    when it gives none); ``n_ctx`` caps prompt + completion; ``grace_s`` is how long a shutdown
    waits for running requests."""

    model_id: str
    n_ctx: int
    max_tokens: int = 512
    default_tokens: int = 128
    limits: Limits = field(default_factory=Limits)
    grace_s: float = 10.0


@dataclass
class Prepared:
    """A checked request: the engine job's rows and sampling, and what the response echoes."""

    rows: list[RowRequest]
    sampling: Sampling
    steering: RowSteering
    chat: bool
    stream: bool
    include_usage: bool
    prompt_tokens: int  # summed over prompts, each counted once whatever n is
    return_token_ids: bool = False  # vLLM's extension: each choice also lists its token ids


def _check_model(name: str, settings: Settings) -> None:
    valid = {settings.model_id, settings.model_id.rstrip("/").rsplit("/", 1)[-1]}
    if name not in valid:
        raise RequestError("model", f"{name!r} is not served here; this server serves {settings.model_id!r}", 404)


def prepare(req: ChatRequest | CompletionRequest, engine: Engine, store: VectorStore, settings: Settings) -> Prepared:
    """Check ``req`` and turn it into engine rows (RequestError naming the field otherwise)."""
    max_rows = engine.max_batch
    _check_model(req.model, settings)
    if (unsupported := req.unsupported()) is not None:
        raise RequestError(unsupported, "is not supported by this server")
    chat = isinstance(req, ChatRequest)
    max_tokens = (req.max_completion_tokens or req.max_tokens) if chat else req.max_tokens  # type: ignore[union-attr]
    limit_field = "max_completion_tokens" if chat and req.max_completion_tokens else "max_tokens"  # type: ignore[union-attr]
    if max_tokens is None:
        max_tokens = min(settings.default_tokens, settings.max_tokens)
    if max_tokens > settings.max_tokens:
        raise RequestError(
            limit_field, f"{max_tokens} exceeds this server's limit of {settings.max_tokens} (--max-tokens)"
        )
    stops = req.stop_strings()
    if len(stops) > 4:
        raise RequestError("stop", f"at most 4 stop strings, got {len(stops)}")
    spec, where = req.steering_field()
    try:
        steering = parse_steering(spec, store, settings.limits)
    except RequestError as exc:
        raise RequestError(where + exc.param.removeprefix("steering"), exc.message, exc.status) from None
    if chat:
        messages = [m.as_dict() for m in req.messages]  # type: ignore[union-attr]
        try:
            texts, prompt_field = [format_chat(chat_tokenizer(engine.model), messages)], "messages"
        except (ValueError, Exception) as exc:  # the chat template rejects some role orders
            raise RequestError("messages", f"cannot be formatted with the model's chat template: {exc}") from None
    else:
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)  # type: ignore[union-attr]
        if not prompts or any(not p for p in prompts):
            raise RequestError("prompt", "must be a non-empty string or a list of non-empty strings")
        texts, prompt_field = prompts, "prompt"
    if len(texts) * req.n > max_rows:
        raise RequestError(
            "n", f"{len(texts)} prompt(s) × n={req.n} rows exceed the batch limit of {max_rows} (--max-batch)"
        )
    rows: list[RowRequest] = []
    prompt_tokens = 0
    for p, text in enumerate(texts):
        ids = engine.encode(text)
        if len(ids) + max_tokens > settings.n_ctx:
            raise RequestError(
                prompt_field,
                f"{len(ids)} prompt tokens + max_tokens {max_tokens} exceed the model's context of {settings.n_ctx}",
            )
        rows += [RowRequest(ids, steering, p * req.n + k) for k in range(req.n)]
        prompt_tokens += len(ids)
    extra = req.model_extra or {}  # vLLM's extensions: ignore_eos, return_token_ids
    sampling = Sampling(max_tokens, req.temperature, req.top_p, req.seed, stops, bool(extra.get("ignore_eos")))
    token_ids = bool(extra.get("return_token_ids"))
    return Prepared(rows, sampling, steering, chat, req.stream, req.include_usage(), prompt_tokens, token_ids)


def steering_summary(steering: RowSteering) -> dict[str, Any]:
    """What the response echoes: where each vector was added (and its norm), what was ablated."""
    return {
        "additions": [
            {"site": a.site, "norm": round(float(a.vector.norm()), 6), "positions": a.where} for a in steering.additions
        ],
        "ablations": [{"layers": "all" if b.layers is None else list(b.layers)} for b in steering.ablations],
    }


class EventQueue:
    """Engine events for one request, moved from the engine thread onto the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def sink(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def submit(engine: Engine, prepared: Prepared) -> tuple[Job, EventQueue]:
    events = EventQueue()
    job = Job(prepared.rows, prepared.sampling, events.sink)
    engine.submit(job)
    return job, events


async def collect(
    request: Request, job: Job, events: EventQueue, prepared: Prepared, settings: Settings
) -> dict[str, Any]:
    """Wait for every row of a non-streaming request; cancel it if the client goes away."""
    texts: dict[int, str] = {r.index: "" for r in prepared.rows}
    done: dict[int, Finished] = {}
    checked = time.monotonic()
    getter: asyncio.Task | None = None  # kept across polls: a cancelled get could drop an event
    try:
        while len(done) < len(texts):
            if getter is None:
                getter = asyncio.ensure_future(events.queue.get())
            finished, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            event = getter.result() if finished else None
            if finished:
                getter = None
            if time.monotonic() - checked >= DISCONNECT_POLL_S:  # tokens may flow without pause: check by the clock
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise RequestError("", "client disconnected", 499)
            if isinstance(event, Failed):
                raise RequestError("", event.message, 503)
            if isinstance(event, Delta):
                texts[event.index] += event.text
            elif isinstance(event, Finished):
                done[event.index] = event
    finally:
        job.cancel()
        if getter is not None:
            getter.cancel()
    n_completion = sum(f.completion_tokens for f in done.values())
    choices = []
    for index in sorted(texts):
        reason = done[index].reason
        if prepared.chat:
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": texts[index]},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            )
        else:
            choices.append({"index": index, "text": texts[index], "finish_reason": reason, "logprobs": None})
        if prepared.return_token_ids:
            choices[-1]["token_ids"] = list(done[index].token_ids)
    return {
        "id": new_id("chatcmpl" if prepared.chat else "cmpl"),
        "object": "chat.completion" if prepared.chat else "text_completion",
        "created": now(),
        "model": settings.model_id,
        "choices": choices,
        "usage": usage(prepared.prompt_tokens, n_completion),
        "steering": steering_summary(prepared.steering),
    }


async def stream(job: Job, events: EventQueue, prepared: Prepared, settings: Settings) -> AsyncIterator[str]:
    """SSE ``data:`` payloads in OpenAI's chunk format, ending with ``[DONE]``."""
    chat = prepared.chat
    base = {
        "id": new_id("chatcmpl" if chat else "cmpl"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": now(),
        "model": settings.model_id,
    }

    def chunk(index: int, text: str | None, reason: str | None, role: bool = False, ids: tuple[int, ...] = ()) -> str:
        if chat:
            delta: dict[str, Any] = (
                {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            )
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
        if reason is not None and prepared.return_token_ids:
            choice["token_ids"] = list(ids)
        body = {**base, "choices": [choice]}
        if prepared.include_usage:
            body["usage"] = None
        return json.dumps(body)

    left = {r.index for r in prepared.rows}
    n_completion = 0
    try:
        if chat:
            for index in sorted(left):
                yield chunk(index, None, None, role=True)
        while left:
            event = await events.queue.get()
            if isinstance(event, Failed):
                yield json.dumps(error_body(event.message, None, "server_error"))
                return
            if isinstance(event, Delta):
                yield chunk(event.index, event.text, None)
            elif isinstance(event, Finished):
                left.discard(event.index)
                n_completion += event.completion_tokens
                yield chunk(event.index, None, event.reason, ids=event.token_ids)
        if prepared.include_usage:
            yield json.dumps({**base, "choices": [], "usage": usage(prepared.prompt_tokens, n_completion)})
        yield "[DONE]"
    finally:
        job.cancel()  # the client went away or the stream ended: the engine drops any rows left
