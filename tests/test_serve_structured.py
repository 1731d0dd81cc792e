"""Structured outputs and honest sampling through `tailor serve`, driven by unchanged clients (the
openai SDK's `chat.completions.parse` and LangChain's `with_structured_output`) against tiny
models with random weights: their replies are valid only because the decoder enforces them."""

import json
import threading
import time
from typing import Literal

import jsonschema
import openai
import pytest
import torch
from pydantic import BaseModel, Field

from infer_kit import save_lively
from servekit import serving
from test_serve_render import QWEN_LIKE
from tiny import make_model, make_tokenizer, save_tiny

HI = [{"role": "user", "content": "Describe a person."}]


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=30)


class Person(BaseModel):
    name: str = Field(max_length=8)
    happy: bool
    pets: list[Pet] = Field(max_length=2)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


# Llama 3.1's JSON tool calls: the assistant's reply is {"name": ..., "parameters": ...}
LLAMA3_LIKE = (
    "{%- for message in messages %}{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{{- '{\"name\": \"' + call.function.name + '\", \"parameters\": ' + (call.function.arguments | tojson) + '}' }}"
    "{%- endfor %}{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


def _save_lively_tools(folder, template=QWEN_LIKE, special=("<tool_call>", "</tool_call>")):
    """A tool-calling template (by default Qwen's <tool_call> blocks), its markers special tokens, lively weights."""
    tok = make_tokenizer(chat_template=template, extra_special=list(special))
    model = make_model(tok, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import Limits, create_app
    from tailor.serve.registry import Registry

    root = tmp_path_factory.mktemp("structured")
    refs = [save_lively(root / "tiny"), save_tiny(root / "stock"), _save_lively_tools(root / "qwen"),
            _save_lively_tools(root / "llama", LLAMA3_LIKE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))]
    reg = Registry.load([str(r) for r in refs], ["tiny", "stock", "qwen", "llama"], dtype="float32", max_batch=8,
                        max_len=1024)
    with serving(create_app(reg, limits=Limits(max_n=20))) as url:
        yield url, reg


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _chat(client, model="tiny", **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 80)
    return client.chat.completions.create(model=model, messages=HI, **kw)


# -- response_format -------------------------------------------------------------------------------


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(model="tiny", messages=HI, response_format=Person, temperature=0,
                                      max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Person)
    assert Person.model_validate_json(choice.message.content) == choice.message.parsed
    with pytest.raises(ValueError):  # the same model left alone writes no JSON at all
        json.loads(_chat(client).choices[0].message.content)


def test_parse_while_streaming_gives_the_same_object(client):
    whole = client.chat.completions.parse(model="tiny", messages=HI, response_format=Person, temperature=0,
                                          max_tokens=80).choices[0].message.parsed
    with client.chat.completions.stream(model="tiny", messages=HI, response_format=Person, temperature=0,
                                        max_tokens=80) as stream:
        deltas = [e for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 3 and final.choices[0].message.parsed == whole


def test_json_object_parses_across_20_seeds(client, server):
    # a random model seldom closes a string by chance: favouring tokens with `"` or `}` keeps its
    # replies short, and would make garbage of them without the grammar (checked below)
    tok = server[1].get("stock").tokenizer
    closers = {str(i): 4 for t, i in tok.get_vocab().items() if set(tok.convert_tokens_to_string([t])) & set('"}')}
    ask = dict(model="stock", temperature=1.0, max_tokens=200, n=20, seed=100, logit_bias=closers)
    r = _chat(client, response_format={"type": "json_object"}, **ask)
    replies = [json.loads(c.message.content) for c in r.choices]
    assert all(isinstance(x, dict) for x in replies) and len({json.dumps(x) for x in replies}) > 5
    unconstrained = _chat(client, **ask)
    assert sum(_parses(c.message.content) for c in unconstrained.choices) < 5


def _parses(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def test_max_tokens_before_the_json_closes_is_length(client):
    r = _chat(client, response_format={"type": "json_schema", "json_schema": {
        "name": "person", "strict": True, "schema": openai.lib._pydantic.to_strict_json_schema(Person)}},
        max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="tiny", messages=HI, response_format=Person, max_tokens=5)


def test_text_format_changes_nothing(client):
    assert _chat(client, response_format={"type": "text"}).choices[0].message.content == \
        _chat(client).choices[0].message.content


@pytest.mark.parametrize("fmt, param, words", [
    ({"type": "xml"}, "response_format.type", ["json_schema"]),
    ({"type": "json_schema"}, "response_format.json_schema", ["name"]),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "response_format.json_schema.name", []),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string", "minLength": 1, "uniqueItems": True}},
        "required": ["a"], "additionalProperties": False}}},
     "response_format.json_schema.schema.properties.a.uniqueItems", ["`uniqueItems`", "strict"]),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "file:///etc/passwd"}}},
     "response_format.json_schema.schema.$ref", ["inside the schema"]),
])
def test_bad_response_formats_are_400s_naming_the_field(client, fmt, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, response_format=fmt)
    assert err.value.body["param"] == param
    assert all(w in err.value.body["message"] for w in words) and "/etc" not in err.value.body["message"]


def _nested(depth):
    s = {"type": "string"}
    for _ in range(depth):
        s = {"type": "object", "properties": {"a": s}, "required": ["a"]}
    return s


PATHOLOGICAL = {
    "deep nesting": _nested(100),
    "huge enum": {"type": "object", "properties": {"k": {"enum": [f"value {i}" for i in range(50_000)]}}},
    "recursive $ref": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    "remote $ref": {"type": "object", "properties": {"k": {"$ref": "https://example.com/k.json"}}},
}


def test_pathological_schemas_are_400s_and_never_stall_others(client):
    box = {}

    def other():  # a plain request decoding meanwhile
        box["reply"] = _chat(client, max_tokens=60).choices[0].finish_reason

    thread = threading.Thread(target=other)
    thread.start()
    for name, schema in PATHOLOGICAL.items():
        start = time.perf_counter()
        with pytest.raises(openai.BadRequestError) as err:
            _chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert err.value.body["param"].startswith("response_format.json_schema.schema"), name
        assert time.perf_counter() - start < 10, name
    thread.join(60)
    assert box["reply"] in ("stop", "length")


# -- tools -----------------------------------------------------------------------------------------


def _calls(r):
    return [(c.function.name, json.loads(c.function.arguments)) for c in r.choices[0].message.tool_calls or []]


def _validates(name, args):
    spec = {"get_weather": WEATHER, "get_time": CLOCK}[name]["function"]["parameters"]
    jsonschema.validate(args, spec)
    return True


def test_required_tool_choice_forces_a_valid_call(client):
    ask = dict(model="qwen", tools=[WEATHER, CLOCK], max_tokens=120)
    assert not _calls(_chat(client, **ask))  # unforced, the random model calls nothing
    r = _chat(client, tool_choice="required", parallel_tool_calls=False, **ask)
    calls = _calls(r)
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert all(_validates(name, args) for name, args in calls)
    several = _calls(_chat(client, tool_choice="required", temperature=1.0, seed=4, **ask))
    assert several and all(_validates(name, args) for name, args in several)


def test_a_named_tool_choice_forces_that_function(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    r = _chat(client, model="qwen", tools=[WEATHER, CLOCK], tool_choice=named, max_tokens=120)
    assert r.choices[0].finish_reason == "stop"  # OpenAI ends a named call with "stop"
    assert [name for name, _ in _calls(r)] == ["get_time"] and _validates(*_calls(r)[0])
    chunks = list(_chat(client, model="qwen", tools=[WEATHER, CLOCK], tool_choice=named, max_tokens=120,
                        stream=True))
    streamed = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [json.loads(tc.function.arguments) for tc in streamed] == [args for _, args in _calls(r)]


def test_forced_calls_in_llama3_json(client, server):
    from tailor.data.toolcalls import LLAMA3_JSON, detect_style

    assert detect_style(server[1].get("llama").tokenizer.chat_template) == LLAMA3_JSON
    r = _chat(client, model="llama", tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False,
              max_tokens=120)
    calls = _calls(r)
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1 and _validates(*calls[0])


def test_forcing_needs_a_known_tool_format_and_good_schemas(client):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, tools=[WEATHER], tool_choice="required")  # "tiny" has no tool-calling template
    assert err.value.body["param"] == "tool_choice"
    odd = {"type": "function", "function": {"name": "odd", "parameters": {"type": "object", "not": {}}}}
    with pytest.raises(openai.BadRequestError) as err:  # llguidance cannot enforce `not`
        _chat(client, model="qwen", tools=[odd], tool_choice="required")
    assert err.value.body["param"] == "tools" and "not" in err.value.body["message"]
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True,
                                               "parameters": {"type": "object", "properties": {"a": {}}}}}
    with pytest.raises(openai.BadRequestError) as err:  # strict tools keep to OpenAI's subset
        _chat(client, model="qwen", tools=[strict], tool_choice="required")
    assert err.value.body["param"] == "tools[0].function.parameters.additionalProperties"


# -- penalties and bias ----------------------------------------------------------------------------


def test_logit_bias_bans_and_forces(client, server):
    tok = server[1].get("tiny").tokenizer
    free = _chat(client, max_tokens=6, logprobs=True).choices[0].logprobs.content
    first = tok.convert_tokens_to_ids(tok.tokenize(free[0].token))[0]
    banned = _chat(client, max_tokens=6, logprobs=True, logit_bias={str(first): -100}).choices[0].logprobs.content
    assert banned[0].token != free[0].token
    target = tok.convert_tokens_to_ids("Paris") if "Paris" in tok.get_vocab() else 300
    forced = _chat(client, max_tokens=6, logit_bias={str(target): 100}).choices[0].message.content
    assert forced == tok.decode([target] * 6)


def test_frequency_penalty_lowers_repetition(client):
    plain = _chat(client, model="stock", max_tokens=40, logprobs=True).choices[0].logprobs.content
    penalised = _chat(client, model="stock", max_tokens=40, logprobs=True,
                      frequency_penalty=2.0).choices[0].logprobs.content

    def repeats(entries):  # tokens that repeat an earlier one
        tokens = [e.token for e in entries]
        return len(tokens) - len(set(tokens))

    assert repeats(plain) > 20 and repeats(penalised) < repeats(plain) / 2


def test_seed_repeats_with_penalties_and_bias(client):
    kw = dict(temperature=1.0, seed=5, frequency_penalty=1.0, presence_penalty=0.5, logit_bias={"50": 4})
    assert _chat(client, **kw).choices[0].message.content == _chat(client, **kw).choices[0].message.content


@pytest.mark.parametrize("kw, param", [
    (dict(frequency_penalty=2.5), "frequency_penalty"), (dict(presence_penalty=-3), "presence_penalty"),
    (dict(logit_bias={"5": 101}), "logit_bias"), (dict(logit_bias={"100000": 1}), "logit_bias"),
    (dict(logit_bias={"x": 1}), "logit_bias"),
])
def test_out_of_range_sampling_values_are_400s(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, **kw)
    assert err.value.body["param"] == param
    with pytest.raises(openai.BadRequestError):  # the legacy endpoint checks them the same way
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, **kw)


def test_completions_take_penalties_and_bias(client):
    r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=4, temperature=0,
                                  logit_bias={"300": 100})
    assert r.choices[0].text == server_decode(client, [300] * 4)


def server_decode(client, ids):  # what the server's tokenizer makes of ids, through the API itself
    return client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True).choices[0].text


def test_grammars_compile_off_the_event_loop(client, monkeypatch):
    import asyncio

    from tailor.serve import structured

    seen = []
    real = structured.reply_grammar

    def spy(body, served):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker")
        return real(body, served)

    monkeypatch.setattr(structured, "reply_grammar", spy)
    client.chat.completions.parse(model="tiny", messages=HI, response_format=Person, max_tokens=80)
    list(client.chat.completions.create(model="tiny", messages=HI, stream=True, max_tokens=80,
                                        response_format={"type": "json_object"}))
    assert seen == ["worker", "worker"]


# -- LangChain ------------------------------------------------------------------------------------


def test_langchain_with_structured_output(server, client):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model="tiny", base_url=server[0] + "/v1", api_key="unused", temperature=0,
                                      max_tokens=80, max_retries=0)
    person = llm.with_structured_output(Person, method="json_schema").invoke("Describe a person.")
    assert isinstance(person, Person)
    tok = server[1].get("stock").tokenizer
    closers = {i: 4 for t, i in tok.get_vocab().items() if set(tok.convert_tokens_to_string([t])) & set('"}')}
    stock = langchain_openai.ChatOpenAI(model="stock", base_url=server[0] + "/v1", api_key="unused", temperature=1.0,
                                        seed=3, max_tokens=200, logit_bias=closers, max_retries=0)
    reply = stock.with_structured_output(None, method="json_mode").invoke("Reply in JSON.")
    assert isinstance(reply, dict)


class City(BaseModel):
    name: str
    country: str
    population_millions: int = Field(ge=0, le=100)


@pytest.mark.integration
def test_parse_on_the_default_model():
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    reg = Registry.load(["default"], max_batch=2, max_len=2048)
    with serving(create_app(reg)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        question = "What is the capital of France? Answer in JSON."
        ask = dict(model="default", messages=[{"role": "user", "content": question}], response_format=City,
                   temperature=0, max_tokens=60)
        city = client.chat.completions.parse(**ask).choices[0].message.parsed
        assert isinstance(city, City) and city.name == "Paris"
        with client.chat.completions.stream(**ask) as stream:
            assert stream.get_final_completion().choices[0].message.parsed == city
