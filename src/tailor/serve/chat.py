"""POST /v1/chat/completions: render with the model's own chat template, generate n choices,
answer as one JSON body or as a stream of SSE chunks. The end-of-turn token the model generated
is in `logprobs.content` (its own text, e.g. `<|im_end|>`, never in the message) and in
`usage.completion_tokens`, as vLLM reports it and as the completions endpoint does. A
`response_format` or a forced tool call is enforced while decoding (serve.structured). A model
served with a document index gets the top chunks for the latest user turn in its prompt
(rag.context's format), and the response names them in a top-level `tailor.sources` (a stream:
in its last chunk before [DONE])."""

from __future__ import annotations

from tailor.data.convert import Conversation, chat_conversation
from tailor.data.problems import Problems
from tailor.data.templates import render_prompt
from tailor.rag.context import sources
from tailor.serve import structured, tools
from tailor.serve.errors import APIError
from tailor.serve.schemas import ChatOptions, ChatRequest
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


def retrieve(body: ChatRequest, served, messages: list[dict]) -> tuple[list[dict], list | None]:
    """(the messages the model sees, the hits; None when retrieval did not run). Embeds the
    question, so it runs on a worker thread (off_loop), never on the event loop."""
    opts = body.tailor or ChatOptions()
    if served.retriever is None:
        if opts.rag:
            raise APIError(400, f"The model `{body.model}` has no document index, so tailor.rag cannot be true. "
                                "Serve it with --rag MODEL=INDEX (or --index INDEX), or leave tailor.rag out.",
                           param="tailor.rag")
        return messages, None
    if opts.rag is False:
        return messages, None
    return served.retriever.augment(messages, opts.k)


def _jobs(body: ChatRequest, served):
    conv = conversation(body)
    messages, hits = retrieve(body, served, conv.template_messages())
    prompt = prompt_ids(served, messages, conv.tools)
    requested = body.max_completion_tokens or body.max_tokens
    budget = completion_budget(served, len(prompt), requested, "messages")
    top = body.top_logprobs or 0
    grammar = structured.reply_grammar(body, served)
    params = [sampling_params(body, served, len(prompt), budget, j, logprobs=body.logprobs, top_logprobs=top,
                              grammar=grammar) for j in range(body.n)]
    return prompt, Jobs(served, [(prompt, p) for p in params]), hits


def extension(hits: list | None) -> dict | None:
    """The response's `tailor` object: the chunks the prompt held. None: retrieval did not run."""
    return None if hits is None else {"sources": sources(hits)}


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
    prompt, jobs, hits = await off_loop(_jobs, body, served)
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
                message["tool_calls"], finish = calls, tools.finish_reason(body)
        choices.append({"index": i, "message": message,
                        "logprobs": {"content": _logprob_entries(served, events), "refusal": None} if body.logprobs else None,
                        "finish_reason": reason(finish)})
    out = {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": body.model,
           "choices": choices, "usage": usage(len(prompt), generated), "system_fingerprint": None}
    if hits is not None:
        out["tailor"] = extension(hits)
    return out


def stream_setup(body: ChatRequest, served):
    """Validate and submit before the response starts, so errors are still plain HTTP errors."""
    prompt, jobs, hits = _jobs(body, served)
    return _stream(body, served, prompt, jobs, hits)


async def _stream(body: ChatRequest, served, prompt: list[int], jobs: Jobs, hits: list | None):
    meta = Meta("chatcmpl", body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    ext = extension(hits)

    def chunk(choices, usage_=None, final=False):
        """`final`: the last chunk before [DONE], the one that carries the sources."""
        return meta.chunk("chat.completion.chunk", choices, include_usage, usage_, ext if final else None)

    def ends_stream() -> bool:  # this choice's end is the stream's last chunk (no usage chunk follows)
        return not jobs.pending and not include_usage

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
                    reply = _held_reply(body, served, i, held[i], pending_lp[i], style)
                    for j, c in enumerate(reply):
                        yield chunk([c], final=j == len(reply) - 1 and ends_stream())
                continue
            if event.text:
                lp = _logprob_entries(served, pending_lp[i]) if body.logprobs else None
                pending_lp[i] = []
                yield chunk([{"index": i, "delta": {"content": event.text},
                              "logprobs": {"content": lp, "refusal": None} if lp is not None else None,
                              "finish_reason": None}])
            if event.finish_reason:  # with the stop token's log-probability, which has no text to ride on
                lp = _logprob_entries(served, pending_lp[i]) if body.logprobs and pending_lp[i] else None
                yield chunk([{"index": i, "delta": {}, "logprobs": {"content": lp, "refusal": None} if lp else None,
                              "finish_reason": reason(event.finish_reason)}], final=ends_stream())
        if include_usage:
            yield chunk([], usage(len(prompt), generated), final=True)
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
        lp = None
    finish = tools.finish_reason(body) if calls else next(e.finish_reason for e in events if e.finish_reason)
    return out + [{"index": i, "delta": {}, "logprobs": lp, "finish_reason": reason(finish)}]
