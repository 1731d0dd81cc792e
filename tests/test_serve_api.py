"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn
server on a free 127.0.0.1 port, serving a tiny model and a LoRA adapter on the same base."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from infer_kit import save_lively, save_lora
from servekit import serving

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    root = tmp_path_factory.mktemp("serve")
    base = save_lively(root / "base")
    lora = save_lora(base, root / "lora")
    reg = Registry.load([str(base), str(lora)], ["tiny", "tiny-lora"], dtype="float32", max_batch=8, max_len=256)
    app = create_app(reg, api_key=KEY, max_body=64 * 1024)
    with serving(app) as url:
        yield url, reg


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


HI = [{"role": "user", "content": "Hello! How can I help you today?"}]


def _chat(client, model="tiny", messages=HI, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=model, messages=messages, **kw)


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-lora"]
    assert client.models.retrieve("tiny-lora").id == "tiny-lora"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def test_chat_stream_equals_non_stream(client):
    full = _chat(client, max_tokens=16)
    text = full.choices[0].message.content
    assert full.choices[0].finish_reason in ("stop", "length") and text
    chunks = list(_chat(client, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assembled = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert assembled == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_prompt_ids_equal_training_renderer(client, server):
    from tailor.data.formats import Conversation, Message
    from tailor.data.render import render_conversation
    from tailor.serve.chat import prompt_ids

    reg = server[1]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    conv = Conversation([Message(m["role"], m["content"]) for m in messages]
                        + [Message("assistant", "4", train=True)], line=1)
    ids, labels = render_conversation(reg.get("tiny").tokenizer, conv)
    trained_from = next(i for i, lab in enumerate(labels) if lab != -100)
    served = prompt_ids(reg.get("tiny"), messages)
    assert served == ids[:trained_from]
    assert _chat(client, messages=messages, max_tokens=1).usage.prompt_tokens == len(served)


def test_usage_counts_equal_the_tokenizer(client, server):
    tok = server[1].get("tiny").tokenizer
    r = _chat(client, max_tokens=5, stop=None)
    from tailor.data.templates import render_prompt

    assert r.usage.prompt_tokens == len(render_prompt(tok, HI))
    assert r.usage.completion_tokens <= 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    c = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=7, temperature=0)
    assert c.usage.prompt_tokens == len(tok("The quick brown fox")["input_ids"])
    if c.choices[0].finish_reason == "length":
        assert c.usage.completion_tokens == 7


def test_completions_echo_and_logprobs(client):
    plain = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0)
    echo = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0,
                                     echo=True, logprobs=2)
    assert echo.choices[0].text == "The quick brown fox" + plain.choices[0].text
    lp = echo.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert len(lp.tokens) == echo.usage.prompt_tokens + echo.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs[1:])
    two = client.completions.create(model="tiny", prompt=["Hello", "What is"], max_tokens=3, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]


def test_a_generated_stop_token_is_in_logprobs_and_usage(client, server, monkeypatch):
    """lm-evaluation-harness sends echo + logprobs + max_tokens 1 and drops the last token as the
    generated one: a stop token must be there, or the slice eats the continuation's last token."""
    from tailor.infer.engine import generate_ids
    from tailor.infer.sampling import SamplingParams
    from tailor.serve.chat import prompt_ids

    served = server[1].get("tiny")

    def stop_on_the_greedy_token(prompt):  # the model's next token becomes its end-of-text
        first = next(generate_ids(served.engine, prompt, SamplingParams(max_new_tokens=1, temperature=0)))
        monkeypatch.setattr(served, "stop_ids", [first])

    ask = dict(model="tiny", prompt="The quick brown fox", max_tokens=1, temperature=0, echo=True, logprobs=1)
    free = client.completions.create(**ask)
    stop_on_the_greedy_token(served.tokenizer.encode("The quick brown fox"))
    r = client.completions.create(**ask)
    lp, n_prompt = r.choices[0].logprobs, r.usage.prompt_tokens
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == "The quick brown fox"
    assert r.usage.completion_tokens == 1 and len(lp.token_logprobs) == n_prompt + 1
    assert lp.token_logprobs == pytest.approx(free.choices[0].logprobs.token_logprobs, abs=1e-5)
    assert lp.tokens == free.choices[0].logprobs.tokens
    assert lp.top_logprobs[-1] == pytest.approx(free.choices[0].logprobs.top_logprobs[-1])

    stop_on_the_greedy_token(prompt_ids(served, HI))
    ended = _chat(client, max_tokens=5, logprobs=True)
    assert ended.choices[0].finish_reason == "stop" and ended.choices[0].message.content == ""
    assert ended.usage.completion_tokens == 1 and len(ended.choices[0].logprobs.content) == 1
    chunks = list(_chat(client, max_tokens=5, logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in ended.choices[0].logprobs.content])


def test_max_tokens_zero_with_echo_scores_the_prompt(client):
    scored = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=0, echo=True,
                                       logprobs=0)
    full = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=1, echo=True,
                                     logprobs=0, temperature=0)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "The quick brown fox" and scored.usage.completion_tokens == 0
    assert len(lp.token_logprobs) == scored.usage.prompt_tokens
    assert lp.token_logprobs == pytest.approx(full.choices[0].logprobs.token_logprobs[:-1], abs=1e-5)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=0)
    assert err.value.body["param"] == "max_tokens"


def test_n_with_seed_repeats_and_differs(client):
    a = _chat(client, n=2, seed=11, temperature=1.0, max_tokens=10)
    b = _chat(client, n=2, seed=11, temperature=1.0, max_tokens=10)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1]
    assert texts == [c.message.content for c in b.choices]
    assert texts[0] != texts[1]


def test_stop_string_cuts_the_answer(client):
    text = _chat(client, max_tokens=20).choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"answer too uniform to pick a stop string: {text!r}"
    cut = _chat(client, max_tokens=20, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_lora_and_base_answer_differently(client):
    base = _chat(client, model="tiny", max_tokens=12).choices[0].message.content
    lora = _chat(client, model="tiny-lora", max_tokens=12).choices[0].message.content
    assert base != lora
    assert _chat(client, model="tiny-lora", max_tokens=12).choices[0].message.content == lora


def test_chat_logprobs(client):
    r = _chat(client, max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-4  # greedy picks the most likely


def test_errors_use_sdk_exceptions(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, temperature=5)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, messages=[{"role": "user", "content": "word " * 400}])
    assert "maximum context length is 256" in err.value.message
    with pytest.raises(openai.BadRequestError):
        _chat(client, messages=[])
    with pytest.raises(openai.NotFoundError):
        _chat(client, model="../../etc/passwd")
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # unknown fields are ignored
    assert _chat(client, max_tokens=2, extra_body={"not_a_field": 1}).choices


def test_raw_http_errors_keep_the_envelope(server):
    url, headers = server[0], {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url + "/v1/chat/completions", content=b"x" * (65 * 1024), headers=headers)
    assert r.status_code == 413 and "error" in r.json()
    r = httpx.get(url + "/v1/nothing", headers=headers)
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_eight_concurrent_streams_are_decoded_in_one_batch(client, server, monkeypatch):
    """Eight streams at once answer as they do one by one, and really share the decode steps: a
    spy on the backend sees all eight rows in one call. (The first request's prefill waits until
    the other seven are submitted, so they join its batch on any machine.)"""
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(8)]
    expected = [_chat(client, messages=[{"role": "user", "content": p}], max_tokens=16).choices[0].message.content
                for p in prompts]
    engine = server[1].get("tiny").engine
    submit, prefill, decode = engine.submit, engine.backend.prefill, engine.backend.decode
    submitted, all_in, batch_sizes = [], threading.Event(), []

    def counting_submit(req):
        out = submit(req)
        submitted.append(req)
        if len(submitted) == len(prompts):
            all_in.set()
        return out

    def held_prefill(*args, **kw):
        assert all_in.wait(30), f"only {len(submitted)} of {len(prompts)} requests arrived"
        return prefill(*args, **kw)

    def spied_decode(slots, *args, **kw):
        batch_sizes.append(len(slots))
        return decode(slots, *args, **kw)

    monkeypatch.setattr(engine, "submit", counting_submit)
    monkeypatch.setattr(engine.backend, "prefill", held_prefill)
    monkeypatch.setattr(engine.backend, "decode", spied_decode)

    def stream(p):
        chunks = _chat(client, messages=[{"role": "user", "content": p}], max_tokens=16, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(stream, prompts))
    assert got == expected
    assert max(batch_sizes) == len(prompts), batch_sizes


def test_client_disconnect_frees_the_slot(server):
    url, reg = server
    engine = reg.get("tiny").engine
    seen = []
    submit = engine.submit
    engine.submit = lambda req: seen.append(req) or submit(req)
    body = {"model": "tiny", "messages": HI, "max_tokens": 180, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    deadline = time.time() + 10
    while engine.busy and time.time() < deadline:
        time.sleep(0.05)
    engine.submit = submit
    assert engine.busy == 0
    assert seen[0].finish_reason == "cancelled" and len(seen[0].tokens) < 180
