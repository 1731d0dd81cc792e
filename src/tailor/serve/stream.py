"""The bridge from the engine's thread to the server's event loop, and what chat and legacy
completions share: sampling parameters from a request, the context-length check, per-choice
accumulation, SSE framing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from tailor.infer.engine import Event, Request
from tailor.infer.sampling import SamplingParams
from tailor.serve.errors import APIError


class Jobs:
    """Engine requests for one HTTP request (one per choice); their events arrive on an
    asyncio queue as (choice index, Event). `cancel()` frees their slots."""

    def __init__(self, served, jobs: list[tuple[list[int], SamplingParams]]):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.engine = served.engine
        self.requests = []
        for i, (prompt, params) in enumerate(jobs):
            def deliver(event, i=i):
                loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))
            self.requests.append(Request(prompt, params, served.adapter, on_event=deliver,
                                         tokenizer=served.tokenizer))
        self.pending = len(self.requests)
        try:
            for req in self.requests:
                self.engine.submit(req)
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
    try:
        while jobs.pending:
            try:
                i, event = await jobs.next(timeout=1.0)
            except asyncio.TimeoutError:
                if await http_request.is_disconnected():
                    jobs.cancel()
                    return out
                continue
            out[i].append(event)
    finally:
        jobs.cancel()
    return out


def check_error(events: list[Event]) -> None:
    for event in events:
        if event.finish_reason == "error":
            raise APIError(500, f"Generation failed: {event.error}", type_="server_error")


def sampling_params(body, served, prompt_len: int, max_new: int | None, index: int,
                    logprobs: bool = False, top_logprobs: int = 0, echo_logprobs: bool = False) -> SamplingParams:
    seed = None if body.seed is None else body.seed + index  # n choices differ, yet repeat
    return SamplingParams(
        max_new_tokens=max_new, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, seed=seed,
        stop_token_ids=list(served.stop_ids), stop=body.stops(), logprobs=logprobs,
        top_logprobs=top_logprobs, prompt_logprobs=echo_logprobs)


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

    def chunk(self, obj: str, choices: list, include_usage: bool, usage_: dict | None = None) -> str:
        """One SSE event of a stream; with include_usage every chunk carries `usage` (null but
        the last), as OpenAI's streams do."""
        c = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
             "system_fingerprint": None, "choices": choices}
        if include_usage:
            c["usage"] = usage_
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
