"""POST /v1/chat/completions: render with the model's own chat template, generate n choices,
answer as one JSON body or as a stream of SSE chunks."""

from __future__ import annotations

from tailor.data.convert import Conversation, chat_conversation
from tailor.data.problems import Problems
from tailor.data.templates import render_prompt
from tailor.serve import tools
from tailor.serve.errors import APIError
from tailor.serve.schemas import ChatRequest
from tailor.serve.stream import (Jobs, Meta, check_error, collect, completion_budget, error_event, off_loop, reason,
                                 sampling_params, sse, token_text, usage)


def conversation(body: ChatRequest) -> Conversation:
    """The request's messages and offered tools through training's own conversion (the same roles,
    the same parsed tool-call arguments), or a 400 naming the first bad field."""
    tools.check_tool_choice(body)
    problems = Problems("request")
    raw = [m.model_dump(exclude_none=True) for m in body.messages]
    conv = chat_conversation(raw, body.tools, 0, problems, training=False)
    if conv is None:
        first = problems.errors[0]
        raise APIError(400, f"{first.path}: {first.message}. Fix: {first.fix}.", param=first.path or None)
    conv.tools = tools.offered(body)
    return conv


def prompt_ids(served, messages: list[dict], tool_defs: list[dict] | None = None) -> list[int]:
    """The exact ids training rendered for these messages and tools, plus the assistant's opening."""
    try:
        return render_prompt(served.tokenizer, messages, tool_defs)
    except Exception as exc:  # the template itself rejects the conversation (e.g. role order)
        raise APIError(400, f"The model's chat template cannot render these messages: {exc}",
                       param="messages") from exc


def _jobs(body: ChatRequest, served):
    conv = conversation(body)
    prompt = prompt_ids(served, conv.template_messages(), conv.tools)
    requested = body.max_completion_tokens or body.max_tokens
    budget = completion_budget(served, len(prompt), requested, "messages")
    top = body.top_logprobs or 0
    params = [sampling_params(body, served, len(prompt), budget, j, logprobs=body.logprobs, top_logprobs=top)
              for j in range(body.n)]
    return prompt, Jobs(served, [(prompt, p) for p in params])


def _logprob_entries(served, events) -> list[dict]:
    tok = served.tokenizer
    out = []
    for e in events:
        if e.token is None or e.logprob is None:
            continue
        text = token_text(tok, e.token)
        out.append({"token": text, "logprob": e.logprob, "bytes": list(text.encode()),
                    "top_logprobs": [{"token": token_text(tok, t), "logprob": lp,
                                      "bytes": list(token_text(tok, t).encode())} for t, lp in (e.top_logprobs or [])]})
    return out


async def complete(body: ChatRequest, served, http_request) -> dict:
    prompt, jobs = await off_loop(_jobs, body, served)
    results = await collect(jobs, http_request)
    meta = Meta("chatcmpl", body.model)
    style = tools.reply_style(body, served)
    choices, generated = [], 0
    for i, events in enumerate(results):
        check_error(events)
        generated += sum(e.token is not None for e in events)
        finish = next((e.finish_reason for e in events if e.finish_reason), "stop")
        message = {"role": "assistant", "content": "".join(e.text for e in events), "refusal": None}
        if style:
            message["content"], calls = tools.read_reply(body, served, events, style)
            if calls:
                message["tool_calls"], finish = calls, "tool_calls"
        choices.append({"index": i, "message": message,
                        "logprobs": {"content": _logprob_entries(served, events), "refusal": None} if body.logprobs else None,
                        "finish_reason": reason(finish)})
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": body.model,
            "choices": choices, "usage": usage(len(prompt), generated), "system_fingerprint": None}


def stream_setup(body: ChatRequest, served):
    """Validate and submit before the response starts, so errors are still plain HTTP errors."""
    prompt, jobs = _jobs(body, served)
    return _stream(body, served, prompt, jobs)


async def _stream(body: ChatRequest, served, prompt: list[int], jobs: Jobs):
    meta = Meta("chatcmpl", body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices, usage_=None):
        return meta.chunk("chat.completion.chunk", choices, include_usage, usage_)

    generated = 0
    pending_lp: dict[int, list] = {i: [] for i in range(body.n)}
    # With tools offered, a reply is only known to be calls or text once it ends, so each
    # choice's events are held and sent at its end: content first, then its tool_calls.
    style = tools.reply_style(body, served)
    held: dict[int, list] = {i: [] for i in range(body.n)}
    try:
        for i in range(body.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        while jobs.pending:
            i, event = await jobs.next()
            if event.finish_reason == "error":
                yield error_event(event)
                return
            if event.token is not None:
                generated += 1
                pending_lp[i].append(event)
            if style:
                held[i].append(event)
                if event.finish_reason:
                    for c in _held_reply(body, served, i, held[i], pending_lp[i], style):
                        yield chunk([c])
                continue
            if event.text:
                lp = _logprob_entries(served, pending_lp[i]) if body.logprobs else None
                pending_lp[i] = []
                yield chunk([{"index": i, "delta": {"content": event.text},
                              "logprobs": {"content": lp, "refusal": None} if lp is not None else None,
                              "finish_reason": None}])
            if event.finish_reason:
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason(event.finish_reason)}])
        if include_usage:
            yield chunk([], usage(len(prompt), generated))
        yield sse("[DONE]")
    finally:  # the client left (or we finished): free the engine's slots either way
        jobs.cancel()


def _held_reply(body: ChatRequest, served, i: int, events, lp_events, style: str) -> list[dict]:
    """The stream chunks (their choices) of one held reply: its text, its tool calls, its end."""
    content, calls = tools.read_reply(body, served, events, style)
    lp = {"content": _logprob_entries(served, lp_events), "refusal": None} if body.logprobs else None
    out = []
    if content:
        out.append({"index": i, "delta": {"content": content}, "logprobs": lp, "finish_reason": None})
        lp = None
    if calls:
        out.append({"index": i, "delta": {"tool_calls": [dict(call, index=k) for k, call in enumerate(calls)]},
                    "logprobs": lp, "finish_reason": None})
    finish = "tool_calls" if calls else next(e.finish_reason for e in events if e.finish_reason)
    return out + [{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason(finish)}]
