"""The bridge from the engine's thread to the server's event loop, and what chat and legacy
completions share: sampling parameters from a request, the context-length check, per-choice
accumulation, SSE framing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

from tailor.infer.engine import Event, QueueFull, Request
from tailor.infer.sampling import SamplingParams
from tailor.serve import metrics
from tailor.serve.errors import APIError, envelope, server_failure

RETRY_AFTER_S = 1  # what a 429 tells the client to wait: a slot frees every few decode steps
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
_loop: ContextVar[asyncio.AbstractEventLoop] = ContextVar("tailor_serve_loop")
# The project of the request being handled (set by the API-key Guard): the engine shares its
# slots between projects by it.
current_project: ContextVar[str | None] = ContextVar("tailor_project", default=None)


async def off_loop(fn, *args):
    """Run `fn(*args)` on a worker thread. Rendering a chat template and tokenising a body of
    megabytes take long enough to stall every stream if they ran on the event loop; Jobs made
    in `fn` still deliver their events to this loop."""
    _loop.set(asyncio.get_running_loop())
    return await asyncio.to_thread(fn, *args)  # copies the context: the loop and the request id


class Jobs:
    """Engine requests for one HTTP request (one per choice); their events arrive on an
    asyncio queue as (choice index, Event). `cancel()` frees their slots."""

    def __init__(self, served, jobs: list[tuple[list[int], SamplingParams]]):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # made on a worker thread by off_loop
            loop = _loop.get()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.engine = served.engine
        capacity = self.engine.capacity
        if capacity is not None and len(jobs) > capacity:
            raise APIError(400, f"This request asks for {len(jobs)} generations (prompts times n); this server runs "
                                f"and queues at most {capacity} per model. Send fewer prompts or a smaller n.",
                           param="n")
        self.requests = []
        for i, (prompt, params) in enumerate(jobs):
            def deliver(event, i=i):
                loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))
            self.requests.append(Request(prompt, params, served.adapter, project=current_project.get(),
                                         on_event=deliver, tokenizer=served.tokenizer))
        self.pending = len(self.requests)
        metrics.watch(served, self.requests)  # timed for /metrics (first token, end): before the engine has them
        try:
            for req in self.requests:
                self.engine.submit(req)
        except QueueFull as exc:
            self.cancel()
            raise APIError(429, f"The server is busy ({exc}); retry after {RETRY_AFTER_S} s.", type_="requests",
                           code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
        except (ValueError, RuntimeError) as exc:
            self.cancel()
            raise APIError(503 if isinstance(exc, RuntimeError) else 400, str(exc)) from exc

    async def next(self, timeout: float | None = None) -> tuple[int, Event]:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item[1].finish_reason:
            self.pending -= 1
        return item

    def cancel(self) -> None:
        for req in self.requests:
            if not req.done:
                self.engine.cancel(req)


async def collect(jobs: Jobs, http_request) -> list[list[Event]]:
    """Every event of every choice; cancels the work if the client goes away meanwhile."""
    out: list[list[Event]] = [[] for _ in jobs.requests]
    # a watcher beside the loop: tokens may flow without pause, yet a client that left must
    # free its slots at once, not after max_tokens
    watcher = asyncio.create_task(_cancel_on_disconnect(jobs, http_request))
    try:
        while jobs.pending:
            i, event = await jobs.next()  # once cancelled, the engine ends each job with a final event
            out[i].append(event)
    finally:
        watcher.cancel()
        jobs.cancel()
    return out


async def _cancel_on_disconnect(jobs: Jobs, http_request) -> None:
    while not await http_request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    jobs.cancel()


def check_error(events: list[Event]) -> None:
    """A failed generation is a 500 whose message holds only the request id; the detail is logged."""
    for event in events:
        if event.finish_reason == "error":
            raise APIError(500, server_failure(f"generation failed: {event.error}"), type_="server_error")


def error_event(event: Event) -> str:
    """The SSE event that ends a stream whose generation failed (detail logged, not sent)."""
    return sse(envelope(server_failure(f"generation failed: {event.error}"), "server_error"))


def sampling_params(body, served, prompt_len: int, max_new: int | None, index: int,
                    logprobs: bool = False, top_logprobs: int = 0, echo_logprobs: bool = False,
                    grammar=None) -> SamplingParams:
    seed = None if body.seed is None else body.seed + index  # n choices differ, yet repeat
    return SamplingParams(
        max_new_tokens=max_new, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, seed=seed,
        stop_token_ids=list(served.stop_ids), stop=body.stops(), logprobs=logprobs,
        top_logprobs=top_logprobs, prompt_logprobs=echo_logprobs,
        frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
        logit_bias=logit_bias(body, served), grammar=grammar)


def logit_bias(body, served) -> dict[int, float] | None:
    """{token id: bias} from the request's string keys; 400 naming the field for an id outside
    the model's vocabulary or a bias outside -100..100 (OpenAI's range)."""
    if not body.logit_bias:
        return None
    from tailor.infer.loading import embedding_rows

    vocab = embedding_rows(served.engine.backend)
    out = {}
    for key, value in body.logit_bias.items():
        if not key.strip().isdigit() or not 0 <= int(key) < vocab:
            raise APIError(400, f"logit_bias: {key!r} is not a token id of this model (0..{vocab - 1}).",
                           param="logit_bias")
        if not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: token {key} has bias {value}; a bias is between -100 and 100.",
                           param="logit_bias")
        out[int(key)] = float(value)
    return out


def completion_budget(served, prompt_len: int, requested: int | None, param: str) -> int:
    """max new tokens, or a 400 that states the limits when the request cannot fit."""
    limit = served.max_len
    budget = limit - prompt_len
    if budget <= 0 or (requested is not None and requested > budget):
        asked = prompt_len + (requested or 0)
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{asked} tokens ({prompt_len} in the prompt, {requested or 0} for the completion). "
                            "Please reduce the length of the prompt or the completion.",
                       param=param, code="context_length_exceeded")
    return requested if requested is not None else budget


@dataclass
class Meta:
    kind: str  # "chatcmpl" | "cmpl"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.id = f"{self.kind}-{uuid.uuid4().hex[:24]}"

    def chunk(self, obj: str, choices: list, include_usage: bool, usage_: dict | None = None,
              tailor: dict | None = None) -> str:
        """One SSE event of a stream; with include_usage every chunk carries `usage` (null but
        the last), as OpenAI's streams do. `tailor`: the extension object, on the last chunk only."""
        c = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
             "system_fingerprint": None, "choices": choices}
        if include_usage:
            c["usage"] = usage_
        if tailor is not None:
            c["tailor"] = tailor
        return sse(c)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def reason(finish: str) -> str:
    """OpenAI's finish_reason: a request cut short by shutdown reads as stopped."""
    return "stop" if finish == "cancelled" else finish
