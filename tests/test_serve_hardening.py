"""One bad request never hurts another; work per request is bounded; errors do not leak internals.

The engine tests drive `step()` by hand, so "arriving mid-decode" is exact. The server tests run
a real uvicorn on a loopback port with small limits (max batch 8, 4 waiting, n and prompts <= 4)
and slow the backend down where a client must act while tokens are still flowing."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from infer_kit import save_lively, save_lora
from servekit import serving

KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41], [100, 200, 300, 400, 17, 3, 9, 9, 9, 120, 7], [77]]
HI = [{"role": "user", "content": "Hello! How can I help you today?"}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    base = save_lively(root / "base")
    return base, save_lora(base, root / "lora")


def _greedy(n=16, **kw):
    from tailor.infer.sampling import SamplingParams

    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


def _engine(folder, **kw):
    from tailor.infer.loading import load_engine

    return load_engine(str(folder), dtype="float32", **kw).engine


def _run(engine, reqs):
    for r in reqs:
        engine.submit(r)
    while engine.step():
        pass


# -- the engine: a failing request fails alone ---------------------------------------------------


def _poisoned_sampling(ok: int):
    """SamplingParams whose sampler raises after `ok` good draws (inside the engine's sampling)."""
    from tailor.infer.sampling import SamplingParams

    class Poisoned(SamplingParams):
        @property
        def top_k(self):
            self.ok -= 1
            if self.ok < 0:
                raise RuntimeError("poisoned sampler")
            return 0

        @top_k.setter
        def top_k(self, value):
            pass

    p = Poisoned(max_new_tokens=16, temperature=1.0, seed=1)
    p.ok = ok
    return p


def _hf_engine(folder):
    """The fallback backend (HF model, a DynamicCache per slot), whose decode runs row by row."""
    from transformers import AutoModelForCausalLM

    from tailor.infer.engine import Engine
    from tailor.infer.hf_backend import HFForward

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return Engine(HFForward(model, 256), max_batch=8)


@pytest.mark.parametrize("where", ["admit", "sample", "forward", "hf-forward"])
def test_a_poisoned_request_fails_alone(dirs, where):
    from tailor.infer.engine import Request

    engine = _hf_engine(dirs[0]) if where == "hf-forward" else _engine(dirs[0], max_batch=8)
    alone = [Request(p, _greedy()) for p in PROMPTS]
    _run(engine, alone)
    reqs = [engine.submit(Request(p, _greedy())) for p in PROMPTS]
    for _ in range(3):
        engine.step()
    poison = Request([1, 2, 3], _poisoned_sampling(0 if where == "admit" else 2) if "forward" not in where
                     else _greedy())
    if where == "hf-forward":  # the poisoned row is last: the rows before it already appended to their caches
        backend, model = engine.backend, engine.backend.model

        def forward(*a, past_key_values=None, **kw):
            if poison.slot is not None and past_key_values is backend.caches.get(poison.slot):
                raise IndexError("index 99 is out of bounds")
            return model(*a, past_key_values=past_key_values, **kw)

        backend.model = forward
    if where == "forward":  # the batched decode raises whenever the poisoned row is in it
        decode = engine.backend.decode

        def broken(slots, *a, **kw):
            if poison.slot in slots:
                raise IndexError("index 99 is out of bounds")
            return decode(slots, *a, **kw)

        engine.backend.decode = broken
    engine.submit(poison)
    while engine.step():
        pass
    assert poison.finish_reason == "error" and poison.done
    assert [r.finish_reason for r in reqs] == ["length"] * 4
    assert [r.tokens for r in reqs] == [r.tokens for r in alone]
    assert engine.busy == 0 and sorted(engine._free) == list(range(8))


def test_tiny_temperature_is_greedy_and_huge_seeds_work(dirs):
    from tailor.infer.engine import Request
    from tailor.infer.sampling import SamplingParams

    engine = _engine(dirs[0], max_batch=4)
    greedy = Request(PROMPTS[0], _greedy())
    tiny = Request(PROMPTS[0], SamplingParams(max_new_tokens=16, temperature=1e-40))
    big_seed = Request(PROMPTS[1], SamplingParams(max_new_tokens=4, temperature=1.0, seed=2**64 + 5))
    _run(engine, [greedy, tiny, big_seed])
    assert tiny.finish_reason == "length" and tiny.tokens == greedy.tokens
    assert big_seed.finish_reason == "length"


def test_prompt_logprobs_in_row_blocks_equal_the_whole():
    from tailor.infer.sampling import RowLogits, prompt_logprobs

    torch.manual_seed(0)
    logits = torch.randn(37, 50)
    ids = torch.randint(0, 50, (37,)).tolist()
    whole = prompt_logprobs(RowLogits.of(logits), ids, 3, block=1000)
    blocks = prompt_logprobs(RowLogits.of(logits), ids, 3, block=5)
    ref = torch.log_softmax(logits[:-1], -1)
    assert whole[0] is None and blocks[0] is None
    assert [c.logprob for c in blocks[1:]] == pytest.approx([float(ref[i, t]) for i, t in enumerate(ids[1:])], abs=1e-5)
    assert [c.top for c in blocks[1:]] == [c.top for c in whole[1:]]


def test_echo_logprobs_equal_hf_and_are_computed_once_per_prompt(dirs):
    from transformers import AutoModelForCausalLM

    from tailor.infer.engine import Request
    from tailor.infer.sampling import SamplingParams

    engine = _engine(dirs[0], max_batch=4)
    assert not isinstance(engine.backend.prefill(0, PROMPTS[2], all_logits=True), torch.Tensor)  # rows on demand
    engine.backend.release(0)
    req = Request(PROMPTS[2], SamplingParams(max_new_tokens=1, temperature=0, top_logprobs=2, prompt_logprobs=True))
    _run(engine, [req])
    hf = AutoModelForCausalLM.from_pretrained(str(dirs[0]), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([PROMPTS[2]])).logits[0].float(), -1)
    want = [float(ref[i, t]) for i, t in enumerate(PROMPTS[2][1:])]
    assert [c.logprob for c in req.prompt_logprobs[1:]] == pytest.approx(want, abs=1e-4)


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(dirs):
    from tailor.serve.app import Limits, create_app
    from tailor.serve.registry import Registry

    base, lora = dirs
    reg = Registry.load([str(base), str(lora)], ["tiny", "tiny-lora"], dtype="float32", max_batch=8, max_len=256,
                        max_queue=4)
    app = create_app(reg, api_key=KEY, max_body=64 * 1024, limits=Limits(max_n=4, max_prompts=4))
    with serving(app) as url:
        yield url, reg


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


class Slow:
    """Wrap an engine's backend so each decode step sleeps, optionally failing (or holding)
    steps that include a chosen request; restores the backend on exit."""

    def __init__(self, engine, delay=0.02):
        self.engine, self.delay = engine, delay
        self.poison = None  # an engine Request whose decode steps raise
        self.hold = None  # a threading.Event decode waits for (once) from the third step on
        self.steps = 0

    def __enter__(self):
        self.decode = self.engine.backend.decode

        def decode(slots, *a, **kw):
            self.steps += 1
            if self.hold is not None and self.steps >= 3:
                self.hold.wait(10)
                self.hold = None
            time.sleep(self.delay)
            if self.poison is not None and self.poison.slot in slots:
                raise IndexError("secret internal detail 42")
            return self.decode(slots, *a, **kw)

        self.engine.backend.decode = decode
        return self

    def __exit__(self, *exc):
        self.engine.backend.decode = self.decode


def _spy_submit(engine, seen):
    submit = engine.submit

    def spy(req):
        seen.append(req)
        return submit(req)

    engine.submit = spy
    return submit


def test_four_streams_survive_a_poisoned_request(client, server):
    url, reg = server
    engine = reg.get("tiny").engine
    asks = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(4)]
    kw = dict(model="tiny", temperature=0, max_tokens=24)
    expected = [client.chat.completions.create(messages=m, **kw).choices[0].message.content for m in asks]
    seen = []
    with Slow(engine, delay=0.005) as slow:
        slow.hold = threading.Event()
        submit = _spy_submit(engine, seen)
        try:
            def stream(m):
                chunks = client.chat.completions.create(messages=m, stream=True, **kw)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(stream, m) for m in asks]
                deadline = time.time() + 10
                while slow.steps < 3 and time.time() < deadline:  # the four are decoding
                    time.sleep(0.01)
                engine.submit = lambda req: (setattr(slow, "poison", req), submit(req), slow.hold.set())[1]
                with httpx.stream("POST", url + "/v1/chat/completions", headers=AUTH,
                                  json={"messages": HI, "stream": True, **kw}) as r:
                    request_id = r.headers["x-request-id"]
                    lines = [line for line in r.iter_lines() if line]
                got = [f.result() for f in futures]
        finally:
            engine.submit = submit
    assert got == expected
    assert slow.poison is not None and slow.poison.finish_reason == "error"
    error = next(line for line in lines if '"error"' in line)
    assert "secret" not in error and "IndexError" not in error and request_id in error
    assert request_id.startswith("req_")


def test_non_streaming_error_is_generic_with_a_request_id(server):
    url, reg = server
    engine = reg.get("tiny").engine
    with Slow(engine, delay=0) as slow:
        slow.poison = type("Any", (), {"slot": None})()
        original = engine.submit
        engine.submit = lambda req: (setattr(slow, "poison", req), original(req))[1]
        try:
            r = httpx.post(url + "/v1/chat/completions", headers=AUTH,
                           json={"model": "tiny", "messages": HI, "max_tokens": 5, "temperature": 0})
        finally:
            engine.submit = original
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and "secret" not in err["message"] and "IndexError" not in err["message"]
    assert r.headers["x-request-id"] in err["message"]


def test_non_streaming_disconnect_frees_the_slot(server):
    url, reg = server
    engine = reg.get("tiny").engine
    seen = []
    with Slow(engine, delay=0.02):
        submit = _spy_submit(engine, seen)
        try:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
                httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=0.5,
                           json={"model": "tiny", "messages": HI, "max_tokens": 180, "temperature": 0})
            deadline = time.time() + 15
            while engine.busy and time.time() < deadline:
                time.sleep(0.05)
        finally:
            engine.submit = submit
    assert engine.busy == 0
    assert seen[0].finish_reason == "cancelled" and len(seen[0].tokens) < 180


def test_seed_range_and_tiny_temperature(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=HI, max_tokens=3, seed=2**63)
    assert err.value.body["param"] == "seed"
    kw = dict(model="tiny", messages=HI, max_tokens=8)
    greedy = client.chat.completions.create(temperature=0, **kw).choices[0].message.content
    assert client.chat.completions.create(temperature=1e-40, **kw).choices[0].message.content == greedy
    assert len(client.chat.completions.create(temperature=1, seed=2**63 - 1, n=2, **kw).choices) == 2


def test_limits_on_n_and_prompts(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=HI, max_tokens=2, n=5)
    assert err.value.body["param"] == "n" and "4" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=["a", "b", "c", "d", "e"], max_tokens=2)
    assert err.value.body["param"] == "prompt" and "4" in err.value.message
    assert len(client.completions.create(model="tiny", prompt=["a", "b"], n=2, max_tokens=2).choices) == 4


def test_echo_logprobs_run_once_per_prompt(client, server):
    engine = server[1].get("tiny").engine
    calls = []
    prefill = engine.backend.prefill
    engine.backend.prefill = lambda *a, **kw: calls.append(kw.get("all_logits")) or prefill(*a, **kw)
    try:
        r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=3, temperature=0,
                                      echo=True, logprobs=2, n=3)
    finally:
        engine.backend.prefill = prefill
    assert sorted(bool(c) for c in calls) == [False, False, True]
    lps = [c.logprobs for c in r.choices]
    n_prompt = r.usage.prompt_tokens
    assert all(lp.token_logprobs[:n_prompt] == lps[0].token_logprobs[:n_prompt] for lp in lps)
    assert lps[0].token_logprobs[0] is None and all(v <= 0 for v in lps[0].token_logprobs[1:n_prompt])


def test_rendering_and_tokenising_run_off_the_event_loop(client, server, monkeypatch):
    def loop_running():
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    where = []
    tok = server[1].get("tiny").tokenizer
    render = tok.apply_chat_template
    monkeypatch.setattr(tok, "apply_chat_template", lambda *a, **kw: where.append(loop_running()) or render(*a, **kw))
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda *a, **kw: where.append(loop_running()) or encode(*a, **kw))
    client.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=2, stream=True))
    client.completions.create(model="tiny", prompt="Hello", max_tokens=2)
    list(client.completions.create(model="tiny", prompt="Hello", max_tokens=2, stream=True))
    assert len(where) >= 4 and not any(where)


def test_load_gets_answers_or_clean_429s(server):
    """64 concurrent clients, 8 slots and 4 waiting places: answers or 429s, never a 5xx."""
    url, reg = server
    engine = reg.get("tiny").engine
    barrier = threading.Barrier(64, timeout=30)
    body = {"model": "tiny", "messages": HI, "max_tokens": 20, "temperature": 0}

    with Slow(engine, delay=0.02), httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
        def one(_):
            barrier.wait()
            r = http.post(url + "/v1/chat/completions", headers=AUTH, json=body)
            return r.status_code, r.headers.get("retry-after"), r.json()

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 8
    for status, retry, payload in results:
        if status == 429:
            assert retry is not None and int(retry) >= 1
            assert payload["error"]["type"] == "requests" and payload["error"]["code"] == "rate_limit_exceeded"
        else:
            assert payload["choices"][0]["message"]["content"] is not None
    deadline = time.time() + 10
    while engine.busy and time.time() < deadline:
        time.sleep(0.05)
    assert engine.busy == 0


def test_health_says_only_ok_behind_a_key(server):
    r = httpx.get(server[0] + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


# -- model ids -----------------------------------------------------------------------------------


def test_default_ids_never_expose_paths(tmp_path, monkeypatch):
    from tailor.serve.registry import model_ids

    for rel in ("runs/pirate/final", "runs/pirate/checkpoint-000200", "a/model", "b/model", "weights"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "weights" / "tiny.gguf").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    refs = ["runs/pirate/final", str(tmp_path / "runs/pirate/checkpoint-000200/"), "a/model", str(tmp_path / "b/model"),
            "weights/tiny.gguf", "default", "HuggingFaceTB/SmolLM2-135M-Instruct", "runs/pirate/final/"]
    ids = model_ids(refs, [])
    assert ids == ["pirate-final", "pirate-checkpoint-000200", "model", "model-2", "tiny", "default",
                   "HuggingFaceTB/SmolLM2-135M-Instruct", "pirate-final-2"]
    assert model_ids(["a/model", "b/model"], ["a/model"]) == ["a/model", "model"]
    assert all(str(tmp_path) not in i for i in ids)


def test_registry_ids_default_to_the_folder_name(tiny_model_dir):
    from tailor.serve.registry import Registry

    reg = Registry.load([str(tiny_model_dir)], dtype="float32", max_batch=1, max_len=64)
    assert list(reg.models) == ["model"]
