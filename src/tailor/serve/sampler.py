"""Samplers for model graders and eval runs (tailor.graders.Sampler): the models this server
serves to one project, through their engines, and optionally one OpenAI-compatible endpoint
the operator configured (`tailor serve --grader-url`). A request only ever names a model id:
never a URL, so a tenant cannot make the server call out anywhere the operator did not choose."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

from tailor.graders.sampler import Sampled, SamplerError

WAIT_S = 600  # longest one grader answer may take, queueing included
QUEUE_RETRIES = 50  # a full engine queue is waited out, 0.2 s at a time


class ServedSampler:
    def __init__(self, registry, project: str | None, external: "ExternalSampler | None" = None):
        self.registry, self.project, self.external = registry, project, external

    def knows(self, model: str) -> bool:
        return self.registry.knows(model, self.project) or (
            self.external is not None and self.external.knows(model))

    def sample(self, model: str, messages: list[dict], params: dict) -> Sampled:
        from tailor.serve.registry import Unavailable

        try:  # a published fine-tune loads on first use (this runs on a worker thread)
            served = self.registry.get(model, self.project)
        except Unavailable as exc:
            raise SamplerError(f"`{model}` cannot be loaded now: {exc}") from None
        if served is None:
            if self.external is not None and self.external.knows(model):
                return self.external.sample(model, messages, params)
            raise SamplerError(f"The model `{model}` does not exist or you do not have access to it.")
        return generate(served, model, messages, params, self.project)


def generate(served, model: str, messages: list[dict], params: dict, project: str | None = None) -> Sampled:
    """One reply from a served model's engine (its own thread runs the decoding)."""
    from tailor.data.templates import render_prompt
    from tailor.infer.engine import QueueFull, Request
    from tailor.infer.sampling import SamplingParams

    try:
        prompt = render_prompt(served.tokenizer, messages)
    except Exception as exc:  # the model's template refuses the conversation
        raise SamplerError(f"the chat template of `{model}` cannot render these messages: {exc}") from None
    room = served.max_len - len(prompt)
    if room <= 0:
        raise SamplerError(f"the prompt is {len(prompt)} tokens; `{model}` holds {served.max_len}")
    sp = SamplingParams(max_new_tokens=min(int(params.get("max_tokens") or room), room),
                        temperature=1.0 if params.get("temperature") is None else float(params["temperature"]),
                        top_p=1.0 if params.get("top_p") is None else float(params["top_p"]),
                        seed=params.get("seed"), stop_token_ids=list(served.stop_ids))
    events, done = [], threading.Event()

    def on_event(e):
        events.append(e)
        if e.finish_reason:
            done.set()

    req = Request(prompt, sp, served.adapter, project=project, on_event=on_event, tokenizer=served.tokenizer)
    for _ in range(QUEUE_RETRIES):
        try:
            served.engine.submit(req)
            break
        except QueueFull:
            time.sleep(0.2)
        except (ValueError, RuntimeError) as exc:
            raise SamplerError(f"`{model}` cannot answer now: {exc}") from None
    else:
        raise SamplerError(f"`{model}` is busy; try again later")
    if not done.wait(WAIT_S):
        served.engine.cancel(req)
        raise SamplerError(f"`{model}` did not answer within {WAIT_S} s")
    finish = next(e.finish_reason for e in events if e.finish_reason)
    if finish == "error":
        raise SamplerError(f"`{model}` failed to generate")
    return Sampled("".join(e.text for e in events), model, len(prompt), sum(e.token is not None for e in events),
                   "stop" if finish == "cancelled" else finish)


class ExternalSampler:
    """An OpenAI-compatible server the operator chose for model graders (e.g. a larger judge).
    Its key comes from the environment ($TAILOR_GRADER_API_KEY), never from a request; `models`
    limits which ids go there (empty: any id this server does not serve itself)."""

    def __init__(self, url: str, api_key: str | None = None, models: tuple[str, ...] = (), timeout: float = 120):
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("TAILOR_GRADER_API_KEY")
        self.models, self.timeout = tuple(models), timeout

    def knows(self, model: str) -> bool:
        return not self.models or model in self.models

    def sample(self, model: str, messages: list[dict], params: dict) -> Sampled:
        body = {"model": model, "messages": messages, "n": 1}
        for key in ("temperature", "top_p", "seed", "response_format"):
            if params.get(key) is not None:
                body[key] = params[key]
        if params.get("max_tokens"):
            body["max_tokens"] = params["max_tokens"]
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + "/chat/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:  # noqa: S310 - the operator's URL
                reply = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise SamplerError(f"the grader endpoint answered {exc.code} for `{model}`") from None
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise SamplerError(f"the grader endpoint could not be reached ({type(exc).__name__})") from None
        try:
            msg = reply["choices"][0]["message"]
            u = reply.get("usage") or {}
            return Sampled(msg.get("content") or "", reply.get("model") or model, int(u.get("prompt_tokens") or 0),
                           int(u.get("completion_tokens") or 0), reply["choices"][0].get("finish_reason") or "stop",
                           refusal=msg.get("refusal"))
        except (KeyError, IndexError, TypeError) as exc:
            raise SamplerError(f"the grader endpoint's reply has no message ({exc})") from None
