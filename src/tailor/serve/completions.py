"""POST /v1/completions (legacy): raw text or token-id prompts, no chat template; `echo` puts
the prompt before the completion, with its log-probabilities when `logprobs` is set (with
`max_tokens: 0`, only those: how evaluators score a text). A generated stop token is in
`logprobs` and in `usage` with no text, as OpenAI's and vLLM's are: lm-evaluation-harness drops
the last returned token as the generated one."""

from __future__ import annotations

from tailor.serve.errors import APIError
from tailor.serve.schemas import CompletionRequest
from tailor.serve.stream import (Jobs, Meta, check_error, collect, completion_budget, error_event, off_loop, reason,
                                 sampling_params, sse, token_text, usage)


def prompt_count(body: CompletionRequest) -> int:
    """How many prompts the request holds, without tokenising anything."""
    p = body.prompt
    return 1 if isinstance(p, str) or not p or isinstance(p[0], int) else len(p)


def prompts(body: CompletionRequest, served) -> list[list[int]]:
    """Token ids of each prompt; ids given directly must index the model's embedding table."""
    p = body.prompt
    if isinstance(p, str):
        p = [p]
    if not p:
        raise APIError(400, "The prompt is empty.", param="prompt")
    if isinstance(p[0], int):
        p = [p]
    from tailor.infer.loading import embedding_rows

    out = []
    vocab = embedding_rows(served.engine.backend)  # the model's table, maybe padded past the tokenizer
    for i, item in enumerate(p):
        ids = served.tokenizer.encode(item, add_special_tokens=True) if isinstance(item, str) else list(item)
        if not ids:
            raise APIError(400, f"Prompt {i} is empty.", param="prompt")
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"Prompt {i} holds a token id outside the vocabulary (0..{vocab - 1}).", param="prompt")
        out.append(ids)
    return out


def _jobs(body: CompletionRequest, served, stream: bool = False):
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens is 0, so the completion would be empty; 0 is for scoring a prompt: "
                            "send echo: true (with logprobs) or ask for at least 1 token.", param="max_tokens")
    ids = prompts(body, served)
    jobs = []
    top = body.logprobs or 0
    # a prompt's log-probabilities are the same for all its choices: the first computes them;
    # a stream's echo chunk carries none
    echo_lp = body.echo and body.logprobs is not None and not stream
    for p in ids:
        budget = completion_budget(served, len(p), body.max_tokens, "prompt")
        for j in range(body.n):
            jobs.append((p, sampling_params(body, served, len(p), budget, j, logprobs=body.logprobs is not None,
                                            top_logprobs=top, echo_logprobs=echo_lp and j == 0)))
    return ids, Jobs(served, jobs)


def _logprobs(served, req, events, echo: bool, offset0: int = 0, prompt_lp=None) -> dict:
    tok = served.tokenizer
    entries = []
    if echo and prompt_lp:
        entries += [(t, c.logprob if c else None, c.top if c else None) for t, c in zip(req.prompt, prompt_lp)]
    entries += [(e.token, e.logprob, e.top_logprobs) for e in events if e.token is not None]
    tokens, offsets, pos = [], [], offset0
    for t, _, _ in entries:
        tokens.append(token_text(tok, t))
        offsets.append(pos)
        pos += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries], "text_offset": offsets,
            "top_logprobs": [None if top is None else {token_text(tok, t): v for t, v in top} for _, _, top in entries]}


async def complete(body: CompletionRequest, served, http_request) -> dict:
    ids, jobs = await off_loop(_jobs, body, served)
    results = await collect(jobs, http_request)
    meta = Meta("cmpl", body.model)
    choices, generated = [], 0
    for i, (req, events) in enumerate(zip(jobs.requests, results)):
        check_error(events)
        generated += sum(e.token is not None for e in events)
        prefix = served.tokenizer.decode(req.prompt, skip_special_tokens=True) if body.echo else ""
        finish = next((e.finish_reason for e in events if e.finish_reason), "stop")
        choices.append({"index": i, "text": prefix + "".join(e.text for e in events), "finish_reason": reason(finish),
                        "logprobs": _logprobs(served, req, events, body.echo,
                                              prompt_lp=jobs.requests[i - i % body.n].prompt_logprobs)
                        if body.logprobs is not None else None})
    return {"id": meta.id, "object": "text_completion", "created": meta.created, "model": body.model,
            "choices": choices, "usage": usage(sum(len(p) for p in ids), generated), "system_fingerprint": None}


def stream_setup(body: CompletionRequest, served):
    ids, jobs = _jobs(body, served, stream=True)
    return _stream(body, served, ids, jobs)


async def _stream(body: CompletionRequest, served, ids, jobs: Jobs):
    meta = Meta("cmpl", body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices, usage_=None):
        return meta.chunk("text_completion", choices, include_usage, usage_)

    generated = 0
    try:
        if body.echo:
            for i, req in enumerate(jobs.requests):
                text = served.tokenizer.decode(req.prompt, skip_special_tokens=True)
                yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
        while jobs.pending:
            i, event = await jobs.next()
            if event.finish_reason == "error":
                yield error_event(event)
                return
            generated += event.token is not None
            lp = None
            if body.logprobs is not None and event.token is not None:
                lp = _logprobs(served, jobs.requests[i], [event], echo=False)
            if event.text or lp or event.finish_reason:
                yield chunk([{"index": i, "text": event.text, "logprobs": lp,
                              "finish_reason": reason(event.finish_reason) if event.finish_reason else None}])
        if include_usage:
            yield chunk([], usage(sum(len(p) for p in ids), generated))
        yield sse("[DONE]")
    finally:
        jobs.cancel()
