"""The scheduler: continuous batching of steered decoding, every row with its own steering.

One thread owns the model. Requests wait in a bounded queue; each turn of the loop

1. runs any queued model calls (the explorer's readouts: nothing else touches the model, so
   no request's hooks can leak into them);
2. admits waiting requests while the batch has room (``max_batch`` rows), after a short
   collection window when the batch was idle, and prefills them together in one forward pass;
   their KV cache then joins the running batch (:mod:`melbo_tl.serve.batch`);
3. decodes one token for every live row in one forward pass, each row steered by its own
   vectors (:func:`melbo_tl.serve.rows.batch_interventions`);
4. hands each row's new text to its request and drops rows that finished, were cancelled, or
   whose client went away.

So a long request never holds a short one back: rows leave the batch when they finish and new
ones join at the next step. Events reach the HTTP layer through a callback per request.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.generate import stop_token_ids
from melbo_tl.models.kv_cache import cached_decoding, check_cache_filled
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import model_device
from melbo_tl.prompts import left_pad
from melbo_tl.serve.batch import Batch, check_joinable
from melbo_tl.serve.rows import RowSteering, batch_interventions
from melbo_tl.steering.interventions import apply
from melbo_tl.steering.layout import TokenLayout, token_layout
from melbo_tl.steering.sites import d_model

log = logging.getLogger("melbo_tl.serve")


class QueueFull(RuntimeError):
    """The request queue is at its limit; the client should retry later."""


class ShuttingDown(RuntimeError):
    """The engine no longer accepts requests."""


@dataclass(frozen=True)
class Sampling:
    """How a request's rows pick tokens: ``temperature`` 0 is greedy; ``stop`` strings end a row;
    ``ignore_eos`` keeps decoding past the end-of-turn token (for fixed-length benchmarks)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class RowRequest:
    """One completion to produce: prompt token ids, its steering, and its choice index."""

    token_ids: tuple[int, ...]
    steering: RowSteering
    index: int = 0


@dataclass(frozen=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """A row is done: ``reason`` is "stop" (stop token or string), "length" or "abort"."""

    index: int
    reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Failed


@dataclass
class Job:
    """A request in the engine: its rows, how to sample them, and where its events go."""

    rows: Sequence[RowRequest]
    sampling: Sampling
    sink: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()


class _Row:
    """A row being decoded: its tokens so far and how much of its text was handed out."""

    def __init__(self, job: Job, request: RowRequest, device: torch.device):
        self.job, self.request = job, request
        s = job.sampling
        self.generator: torch.Generator | None = None
        if s.temperature > 0:
            seed = (s.seed if s.seed is not None else int(torch.randint(0, 2**62, (1,)))) + request.index
            self.generator = torch.Generator(device=device).manual_seed(seed)
        self.ids: list[int] = []
        self.sent = 0
        self.holdback = max((len(x) for x in s.stop), default=1) - 1
        self.done = False

    def push(self, token: int, decode: Callable[[list[int]], str], stops: set[int]) -> None:
        """Take one sampled token; emit new text; finish on a stop token/string or the length limit."""
        s = self.job.sampling
        if token in stops and not s.ignore_eos:
            return self._finish(decode(self.ids), "stop")
        self.ids.append(token)
        text = decode(self.ids)
        for stop in s.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                return self._finish(text[:at], "stop")
        if len(self.ids) >= s.max_tokens:
            return self._finish(text, "length")
        safe = len(text) - self.holdback
        while safe > self.sent and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character
            safe -= 1
        if safe > self.sent:
            self.job.sink(Delta(self.request.index, text[self.sent : safe]))
            self.sent = safe

    def _finish(self, text: str, reason: str) -> None:
        if len(text) > self.sent:
            self.job.sink(Delta(self.request.index, text[self.sent :]))
        self.done = True
        n_prompt = len(self.request.token_ids)
        self.job.sink(Finished(self.request.index, reason, n_prompt, len(self.ids), tuple(self.ids)))


def _sample(logits: Float[Tensor, "rows vocab"], rows: Sequence[_Row]) -> Tensor:
    out = logits.argmax(-1)
    for i, row in enumerate(rows):
        s = row.job.sampling
        if s.temperature <= 0:
            continue
        probs = torch.softmax(logits[i].float() / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            sorted_p = sorted_p * (sorted_p.cumsum(-1) - sorted_p < s.top_p)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        out[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
    return out


class Engine:
    """Continuous batching over one model; see the module docstring.

    ``max_batch`` bounds the rows decoded together, ``max_queue`` the requests waiting to join
    (beyond it :meth:`submit` raises :class:`QueueFull`), ``window_s`` how long an idle engine
    waits after the first arrival so that requests sent together are prefilled together.
    """

    def __init__(self, model: Any, *, max_batch: int = 16, max_queue: int = 64, window_s: float = 0.01):
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be ≥ 1, window_s ≥ 0.")
        self.model, self.max_batch, self.max_queue, self.window_s = model, max_batch, max_queue, window_s
        self._tok = chat_tokenizer(model)
        # The HTTP thread encodes prompts while this one decodes answers: one Rust tokenizer,
        # used by one thread at a time.
        self.tokenizer_lock = threading.Lock()
        self._pad = int(self._tok.pad_token_id if self._tok.pad_token_id is not None else self._tok.eos_token_id)
        self._stops = stop_token_ids(model)
        self._device = model_device(model)
        self._width = d_model(model)
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[Any], Any], concurrent.futures.Future]] = deque()
        self._rows: list[_Row] = []
        self._batch: Batch | None = None
        self._steer: list[Any] | None = None  # interventions for the current rows (rebuilt when they change)
        self._stopping = False
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._joinable_checked = False
        self.stats = {"prefills": 0, "decode_steps": 0, "row_steps": 0, "max_rows": 0, "tokens": 0, "requests": 0}

    # -- the HTTP side -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="melbo-serve-engine", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` (raises QueueFull / ShuttingDown instead of queueing beyond the limits)."""
        if not 1 <= len(job.rows) <= self.max_batch:
            raise ValueError(f"A request may hold 1…{self.max_batch} rows (choices × prompts), got {len(job.rows)}.")
        with self._cond:
            if self._stopping:
                raise ShuttingDown("The server is shutting down.")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (the limit is {self.max_queue}).")
            self._pending.append(job)
            self.stats["requests"] += 1
            self._cond.notify()

    def call(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future:
        """Run ``fn(model)`` on the engine thread between two decoding steps."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("The server is shutting down.")
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    def load(self) -> dict[str, int]:
        with self._cond:
            return {"active_rows": len(self._rows), "queued_requests": len(self._pending)}

    def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work, let admitted and queued requests finish for up to ``grace_s``, then
        abort what is left (their clients get an error event) and end the thread."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + grace_s
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            admitted = self._next_work()
            if admitted is None:
                return
            try:
                if admitted:
                    self._prefill(admitted)
                if self._rows:
                    self._decode()
                time.sleep(0)  # let the HTTP thread take the GIL between steps (streams stay live)
            except Exception as exc:  # a failed forward fails its rows, never the server
                log.error("forward pass failed:\n%s", traceback.format_exc())
                self._abort_all(f"The forward pass failed: {type(exc).__name__}: {exc}")

    def _next_work(self) -> list[_Row] | None:
        """Wait for something to do; run queued calls; return the rows to admit (None: stop)."""
        with self._cond:
            while not (self._pending or self._calls or self._rows or self._stopping):
                self._cond.wait()
            calls = list(self._calls)
            self._calls.clear()
            idle = not self._rows
        for fn, future in calls:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.model))
                except Exception as exc:
                    future.set_exception(exc)
        if idle and self.window_s > 0 and self._pending:
            time.sleep(self.window_s)
        with self._cond:
            if self._stopping and time.monotonic() > self._deadline:
                waiting = list(self._pending)
                self._pending.clear()
                self._abort_all("The server shut down before this request finished.", also=waiting)
                return None
            if self._stopping and not (self._pending or self._rows or self._calls):
                return None
            admitted: list[_Row] = []
            while self._pending:
                job = self._pending[0]
                if job.cancelled.is_set():
                    self._pending.popleft()
                    continue
                if len(self._rows) + len(admitted) + len(job.rows) > self.max_batch:
                    break
                self._pending.popleft()
                admitted += [_Row(job, r, self._device) for r in job.rows]
            return admitted

    def _decode_text(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self._tok.decode(ids, skip_special_tokens=True)

    def encode(self, text: str) -> tuple[int, ...]:
        """Token ids of an already formatted prompt (no special tokens added), thread-safe."""
        with self.tokenizer_lock:
            return tuple(self._tok(text, add_special_tokens=False)["input_ids"])

    def _interventions(self, rows: Sequence[_Row]) -> list[Any]:
        return batch_interventions([r.request.steering for r in rows], self._width)

    @torch.no_grad()
    def _prefill(self, rows: list[_Row]) -> None:
        tokens = left_pad([list(r.request.token_ids) for r in rows], self._pad).to(self._device)
        layout = TokenLayout(tokens.token_index, tokens.lengths)
        with apply(self.model, *self._interventions(rows)), cached_decoding(self.model) as cache:
            with token_layout(layout):
                logits = self.model(
                    tokens.input_ids, attention_mask=tokens.attention_mask, past_key_values=cache, use_cache=True,
                    logits_to_keep=1,
                )  # fmt: skip
        check_cache_filled(cache, tokens.input_ids.shape[1])
        if not self._joinable_checked:
            check_joinable(cache)
            self._joinable_checked = True
        sampled = _sample(logits[:, -1, :], rows)
        new = Batch(cache, tokens.attention_mask, sampled, tokens.lengths.clone(), tokens.lengths.clone())
        self._batch = new if self._batch is None else self._batch.join(new)
        self._rows += rows
        self._steer = None
        self.stats["prefills"] += 1
        self._deliver(rows, sampled)

    @torch.no_grad()
    def _decode(self) -> None:
        batch = self._batch
        assert batch is not None
        if self._steer is None:
            self._steer = self._interventions(self._rows)
        ones = torch.ones((batch.n_rows, 1), dtype=batch.mask.dtype, device=batch.mask.device)
        layout = TokenLayout(batch.lengths[:, None], batch.prompt_lengths)
        with apply(self.model, *self._steer), cached_decoding(self.model), token_layout(layout):
            logits = self.model(
                batch.pending[:, None], attention_mask=torch.cat([batch.mask, ones], dim=1),
                past_key_values=batch.cache, use_cache=True, logits_to_keep=1,
            )  # fmt: skip
        sampled = _sample(logits[:, -1, :], self._rows)
        self._batch = batch.advanced(sampled)
        self.stats["decode_steps"] += 1
        self.stats["row_steps"] += batch.n_rows
        self.stats["max_rows"] = max(self.stats["max_rows"], batch.n_rows)
        self._deliver(self._rows, sampled)

    def _deliver(self, rows: Sequence[_Row], sampled: Tensor) -> None:
        """Hand each of ``rows`` its token, then drop the rows that are done or whose request was cancelled."""
        for row, token in zip(rows, sampled.tolist(), strict=True):
            if not row.done and not row.job.cancelled.is_set():
                row.push(int(token), self._decode_text, self._stops)
                self.stats["tokens"] += 1
        keep = [i for i, r in enumerate(self._rows) if not r.done and not r.job.cancelled.is_set()]
        if len(keep) < len(self._rows):
            assert self._batch is not None
            self._batch = self._batch.keep(keep)
            self._rows = [self._rows[i] for i in keep]
            self._steer = None

    def _abort_all(self, message: str, also: Sequence[Job] = ()) -> None:
        jobs = list(dict.fromkeys([*(r.job for r in self._rows), *also]))
        self._rows, self._batch, self._steer = [], None, None
        for job in jobs:
            with contextlib.suppress(Exception):
                job.sink(Failed(message))
