"""The generation engine: token ids in, token ids (and their text) out, for many requests at once.

Continuous batching: a request that arrives while others are decoding is prefilled into a
free cache slot and joins the very next decode step, and a finished one leaves at once, so
throughput grows with the number of concurrent clients. The engine runs its loop either on a
background thread (`start()`, for the server) or inline in the caller (`generate()` with no
thread, for the CLI). It knows nothing about HTTP or terminals: results go to a callback.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tailor.infer.detok import TextStream
from tailor.infer.sampling import Choice, RowLogits, SamplingParams, make_generator, prompt_logprobs, sample_batch
from tailor.infer.shaping import Shaper, shape

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class QueueFull(Exception):
    """The engine already holds as many requests as it may; the caller should retry later."""


@dataclass
class Event:
    """What a request produced in one step. A final event has `finish_reason` set:
    "stop" (stop token or string), "length" (max tokens or context), "cancelled", or "error".
    A stop token is reported like any token, with no text and `stop_token` set, just before the
    final event: OpenAI and vLLM count it and give its log-probability (evaluators read it)."""

    token: int | None = None
    text: str = ""
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    error: str | None = None
    stop_token: bool = False


@dataclass(eq=False)
class Request:
    prompt: list[int]
    params: SamplingParams
    adapter: int = 0  # 0 is the base model; others were registered with the backend
    project: str | None = None  # who asked: the engine shares its slots fairly between projects
    on_event: Callable[[Event], None] | None = None
    tokenizer: object = None  # for text and stop strings; the engine's when None
    id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] = field(default_factory=list)
    prompt_logprobs: list[Choice | None] | None = None
    finish_reason: str | None = None
    slot: int | None = None
    cancelled: bool = False
    generator: torch.Generator | None = None
    text: TextStream | None = None
    shaper: Shaper | None = None  # bias, penalties, grammar: None when the request asks for none

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Engine:
    def __init__(self, backend, tokenizer=None, max_batch: int = 16, max_queue: int | None = None,
                 max_share: float = 1.0):
        """`backend` has prefill/decode (see infer.llama.LlamaForward); `tokenizer` (optional)
        gives events their text and enables stop strings. `max_queue` bounds the requests
        waiting for a slot (None: unbounded); past it `submit` raises QueueFull. `max_share`:
        the fraction of the running slots one project may hold while another project waits."""
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_share = max_share
        self.max_len = backend.max_len
        self._free = list(range(max_batch))
        self._incoming: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()  # one step at a time, whoever drives it
        self._submit_lock = threading.Lock()

    # -- the public surface -------------------------------------------------------------------

    def submit(self, req: Request) -> Request:
        """Queue a request (thread-safe). Raises ValueError when the prompt cannot fit,
        QueueFull when `capacity` requests are already running or waiting."""
        if not req.prompt:
            raise ValueError("the prompt is empty")
        if len(req.prompt) >= self.max_len:
            raise ValueError(f"the prompt has {len(req.prompt)} tokens; this model's context is {self.max_len}")
        if self._stopping:
            raise RuntimeError("the engine is shutting down")
        with self._submit_lock:  # check and enqueue as one, or two callers could both take the last place
            if self.capacity is not None and self.busy >= self.capacity:
                raise QueueFull(f"{self.max_batch} requests are running and {self.max_queue} waiting")
            self._incoming.put(req)
        self._wake.set()
        return req

    def cancel(self, req: Request) -> None:
        """Stop a request at the next step and free its slot (thread-safe, idempotent)."""
        req.cancelled = True
        self._wake.set()

    def generate(self, prompt: list[int], params: SamplingParams, adapter: int = 0) -> Iterator[Event]:
        """Events for one request, driving the loop inline unless a thread runs it."""
        box: queue.SimpleQueue[Event] = queue.SimpleQueue()
        req = self.submit(Request(list(prompt), params, adapter, on_event=box.put))
        try:
            while True:
                if self._thread is None:
                    while box.empty():
                        self.step()
                event = box.get()
                yield event
                if event.finish_reason:
                    return
        finally:
            if not req.done:
                self.cancel(req)
                if self._thread is None:
                    self.step()

    def start(self) -> None:
        """Run the loop on a background thread until `stop()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tailor-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything queued or running and end the thread."""
        self._stopping = True
        for req in self._all():
            req.cancelled = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.step()

    def holds(self, adapter: int) -> bool:
        """Whether a queued or running request uses `adapter` (so it must stay loaded)."""
        return any(r.adapter == adapter for r in self._all()) or not self._incoming.empty()

    @property
    def busy(self) -> int:
        return len(self._active) + len(self._waiting) + self._incoming.qsize()

    @property
    def capacity(self) -> int | None:
        """Most requests held at once (running plus waiting), or None when unbounded."""
        return None if self.max_queue is None else self.max_batch + self.max_queue

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping or self.busy:
            if not self.step():
                self._wake.wait(0.5)
                self._wake.clear()

    def _all(self) -> list[Request]:
        return list(self._active) + list(self._waiting)

    def step(self) -> bool:
        """Admit new requests, then decode one token for every running one. False when idle.
        A request whose prefill, forward or sampling raises fails alone; the others go on."""
        with self._lock:
            while True:
                try:
                    self._waiting.append(self._incoming.get_nowait())
                except queue.Empty:
                    break
            for req in [r for r in self._all() if r.cancelled or self._stopping]:
                self._finish(req, "cancelled")
            try:
                self._admit()
                if self._active:
                    self._decode()
            except Exception as exc:  # a bug outside any one request's work: fail them all, keep the engine
                log.exception("generation step failed")
                for req in self._all():
                    self._finish(req, "error", error=f"{type(exc).__name__}: {exc}")
            return bool(self._active or self._waiting)

    def _fail(self, req: Request, exc: Exception) -> None:
        log.error("engine request %s failed", req.id, exc_info=exc)
        self._finish(req, "error", error=f"{type(exc).__name__}: {exc} (engine request {req.id})")

    def _admit(self) -> None:
        while self._waiting and self._free:
            req = self._next_waiting()
            self._waiting.remove(req)
            req.slot = heapq.heappop(self._free)
            self._active.append(req)
            try:
                self._prefill(req)
            except Exception as exc:
                self._fail(req, exc)

    def _next_waiting(self) -> Request:
        """First come first served, except that a project already holding its share of the
        running slots lets another project's waiting request go first."""
        if self.max_share >= 1:
            return self._waiting[0]
        cap = max(1, int(self.max_share * self.max_batch))
        running: dict = {}
        for r in self._active:
            running[r.project] = running.get(r.project, 0) + 1
        return next((r for r in self._waiting if running.get(r.project, 0) < cap), self._waiting[0])

    def _prefill(self, req: Request) -> None:
        p = req.params
        req.generator = make_generator(p.seed, getattr(self.backend, "device", "cpu"))
        req.shaper = Shaper.of(p)
        tokenizer = req.tokenizer or self.tokenizer
        if tokenizer is not None:
            req.text = TextStream(tokenizer, p.stop)
        logits = self.backend.prefill(req.slot, req.prompt, req.adapter, all_logits=p.prompt_logprobs)
        if p.prompt_logprobs:
            rows = logits if isinstance(logits, RowLogits) else RowLogits.of(logits)
            with torch.inference_mode():  # rows are made on demand from the prefill's inference tensors
                req.prompt_logprobs = prompt_logprobs(rows, req.prompt, p.top_logprobs)
                logits = rows.last()
        if p.max_new_tokens == 0:  # scoring only (completions' echo with max_tokens 0)
            return self._finish(req, "length")
        self._sample([req], logits[None])

    def _decode(self) -> None:
        batch = sorted(self._active, key=lambda r: r.slot)
        try:
            logits = self._forward(batch)
        except Exception:
            # Find the culprit: rerun the rows one by one. A backend writes a step's keys at the
            # step's own position (infer.llama indexes its cache; infer.hf_backend first drops
            # what a failed try appended), so a retry repeats work but changes nothing.
            log.warning("a decode step of %d requests failed; retrying them one by one", len(batch))
            for req in batch:
                try:
                    logits = self._forward([req])
                except Exception as exc:
                    self._fail(req, exc)
                    continue
                self._sample([req], logits)
            return
        self._sample(batch, logits)

    def _forward(self, batch: list[Request]) -> torch.Tensor:
        return self.backend.decode([r.slot for r in batch], [r.tokens[-1] for r in batch],
                                   [len(r.prompt) + len(r.tokens) - 1 for r in batch],
                                   [r.adapter for r in batch])

    def _sample(self, batch: list[Request], logits: torch.Tensor) -> None:
        """Sample the whole batch at once; if that raises, row by row so only the bad row fails.
        Rows with a Shaper are sampled from changed logits; log-probabilities stay the model's."""
        try:
            shapers = [r.shaper for r in batch]
            if any(shapers):
                shaped = logits.float()
                shaped = shaped.clone() if shaped is logits else shaped  # the model's logits stay as they were
                shape(shaped, shapers)
                choices = sample_batch(shaped, [r.params for r in batch], [r.generator for r in batch], raw=logits)
            else:
                choices = sample_batch(logits, [r.params for r in batch], [r.generator for r in batch])
        except Exception as exc:
            if len(batch) == 1:
                return self._fail(batch[0], exc)
            for i, req in enumerate(batch):
                self._sample([req], logits[i:i + 1])
            return
        for req, choice in zip(batch, choices):
            if choice.error is not None:
                self._fail(req, choice.error)
                continue
            try:
                self._accept(req, choice, logits.shape[-1])
            except Exception as exc:  # e.g. the tokenizer cannot decode the token
                self._fail(req, exc)

    def _accept(self, req: Request, choice: Choice, width: int) -> None:
        """Record a sampled token, tell the client, and finish the request if it is done."""
        if req.shaper is not None:
            req.shaper.accept(choice.token, width, getattr(self.backend, "device", "cpu"))
        if choice.token in req.params.stop_token_ids:
            self._emit(req, Event(choice.token, "", choice.logprob, choice.top, stop_token=True))
            return self._finish(req, "stop")
        req.tokens.append(choice.token)
        text = req.text.push(choice.token) if req.text else ""
        self._emit(req, Event(choice.token, text, choice.logprob, choice.top))
        if req.text is not None and req.text.stopped:
            self._finish(req, "stop")
        elif len(req.tokens) >= req.params.max_new_tokens or len(req.prompt) + len(req.tokens) >= self.max_len:
            self._finish(req, "length")

    def _finish(self, req: Request, reason: str, error: str | None = None) -> None:
        if req.done:
            return
        req.finish_reason = reason
        if req in self._active:
            self._active.remove(req)
            heapq.heappush(self._free, req.slot)
            self.backend.release(req.slot)
        elif req in self._waiting:
            self._waiting.remove(req)
        tail = req.text.finish() if req.text is not None and reason in ("stop", "length") else ""
        self._emit(req, Event(text=tail, finish_reason=reason, error=error))

    @staticmethod
    def _emit(req: Request, event: Event) -> None:
        if req.on_event is None:
            return
        try:
            req.on_event(event)
        except Exception:  # a broken listener must not stop the other requests
            log.exception("event callback failed for request %s", req.id)
            req.cancelled = True


def generate_ids(engine: Engine, prompt_ids: list[int], params: SamplingParams, adapter: int = 0) -> Iterator[int]:
    """Just the new token ids, until a stop token (not included) or max_new_tokens."""
    for event in engine.generate(prompt_ids, params, adapter):
        if event.token is not None and not event.stop_token:
            yield event.token
