"""The server renders a request exactly as training rendered the same conversation (tools,
tool calls, the developer role, several turns), and parses the tool calls the model writes into
the response's tool_calls. Driven through the official openai client against the FastAPI app."""

import json

import openai
import pytest
import torch

from tiny import make_model, make_tokenizer

# A small Qwen2.5-style template: tools in the system turn, each call as <tool_call> JSON with
# `arguments | tojson`, tool results inside a user turn; developer turns rendered as themselves.
QWEN_LIKE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role in ('user', 'developer') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' }}"
    "{{- call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}

CASES = {
    "developer": dict(messages=[{"role": "developer", "content": "Answer in French."},
                                {"role": "user", "content": "What is the capital of France?"}]),
    "multi_turn": dict(messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is 2 + 2?"},
                                 {"role": "assistant", "content": "4"},
                                 {"role": "user", "content": "And 3 + 3?"},
                                 {"role": "assistant", "content": "6"},
                                 {"role": "user", "content": "Thanks! And 4 + 4?"}]),
    "tools": dict(messages=[{"role": "system", "content": "You can call tools."},
                            {"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]),
    "tool_calls": dict(messages=[{"role": "user", "content": "Weather in Paris?"},
                                 {"role": "assistant", "content": None, "tool_calls": [CALL]},
                                 {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
                                 {"role": "user", "content": "Shall I take a coat?"}], tools=[WEATHER]),
    "tool_calls_with_text": dict(messages=[{"role": "user", "content": "Weather in Paris?"},
                                           {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
                                           {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}],
                                 tools=[WEATHER]),
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The Qwen-like model twice: "qwen" holds <tool_call> as special tokens (a plain decode
    drops them), "qwen-text" spells them in bytes."""
    from fastapi.testclient import TestClient

    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    root = tmp_path_factory.mktemp("qwen-like")
    for name, extra in (("qwen", ["<tool_call>", "</tool_call>"]), ("qwen-text", [])):
        tok = make_tokenizer(chat_template=QWEN_LIKE, extra_special=extra)
        make_model(tok).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    reg = Registry.load([str(root / "qwen"), str(root / "qwen-text")], ["qwen", "qwen-text"], dtype="float32",
                        max_batch=4, max_len=512)
    with TestClient(create_app(reg)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0), reg


def _served_prompt(api, monkeypatch, model="qwen", **request):
    client, reg = api
    engine = reg.get(model).engine
    seen = []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda req: seen.append(req) or submit(req))
    r = client.chat.completions.create(model=model, max_tokens=1, temperature=0, **request)
    monkeypatch.setattr(engine, "submit", submit)
    assert r.usage.prompt_tokens == len(seen[0].prompt)
    return seen[0].prompt


def _training_prompt(tokenizer, messages, tools=None):
    """The ids training renders before the final reply, from the same messages as a JSONL line."""
    from tailor.data.convert import from_chat
    from tailor.data.problems import Problems
    from tailor.data.render import render_conversation

    earlier = [dict(m, weight=0) if m["role"] == "assistant" else m for m in messages]
    line = {"messages": earlier + [{"role": "assistant", "content": "It is sunny."}]}
    if tools:
        line["tools"] = tools
    problems = Problems("train.jsonl")
    conv = from_chat(json.loads(json.dumps(line)), 1, problems)
    assert conv is not None, problems.report()
    ids, labels = render_conversation(tokenizer, conv)
    return ids[:next(i for i, lab in enumerate(labels) if lab != -100)]


@pytest.mark.parametrize("case", list(CASES))
def test_server_prompt_ids_equal_the_training_renderer(api, monkeypatch, case):
    request = CASES[case]
    tok = api[1].get("qwen").tokenizer
    assert _served_prompt(api, monkeypatch, **request) == _training_prompt(tok, **request)


def test_tool_choice_none_offers_no_tools(api, monkeypatch):
    tok = api[1].get("qwen").tokenizer
    request = CASES["tools"]
    served = _served_prompt(api, monkeypatch, tool_choice="none", **request)
    assert served == _training_prompt(tok, request["messages"])
    assert "get_weather" not in tok.decode(served)


def test_bad_tool_call_is_a_400_naming_its_field(api):
    client, _ = api
    bad = dict(CALL, function={"name": "get_weather", "arguments": "{city: Paris"})
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [bad]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="qwen", messages=messages, max_tokens=1)
    assert err.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
    assert "not valid JSON" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # a tool result that answers no call
        client.chat.completions.create(model="qwen", messages=[{"role": "tool", "tool_call_id": "x", "content": "1"}],
                                       max_tokens=1)
    assert err.value.body["param"] == "messages[0]"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="qwen", messages=CASES["tools"]["messages"], tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert err.value.body["param"] == "tool_choice"


class Scripted:
    """The model's backend, made to say `script` (token ids) and then stop, whatever the prompt."""

    def __init__(self, inner, script: list[int], stop: int, vocab: int):
        self.inner, self.script, self.stop, self.vocab = inner, script, stop, vocab
        self.steps: dict[int, int] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _next(self, slot: int) -> torch.Tensor:
        k = self.steps[slot]
        self.steps[slot] = k + 1
        logits = torch.full((self.vocab,), -30.0)
        logits[self.script[k] if k < len(self.script) else self.stop] = 30.0
        return logits

    def prefill(self, slot, ids, adapter=0, all_logits=False):
        self.steps[slot] = 0
        return self._next(slot)

    def decode(self, slots, tokens, positions, adapters=None):
        return torch.stack([self._next(s) for s in slots])

    def release(self, slot):
        self.steps.pop(slot, None)


REPLY = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')


@pytest.fixture
def scripted(api, monkeypatch):
    def script(model: str, text: str):
        served = api[1].get(model)
        tok = served.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        backend = Scripted(served.engine.backend, ids, served.stop_ids[0], len(tok))
        monkeypatch.setattr(served.engine, "backend", backend)
    return script


@pytest.mark.parametrize("model", ["qwen", "qwen-text"])
def test_tool_calls_in_the_response(api, scripted, model):
    client, _ = api
    scripted(model, REPLY)
    ask = dict(model=model, messages=CASES["tools"]["messages"], max_tokens=200, temperature=0)
    r = client.chat.completions.create(tools=[WEATHER], **ask)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_weather", {"city": "Oslo"})]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    one = client.chat.completions.create(tools=[WEATHER], parallel_tool_calls=False, **ask)
    assert [json.loads(c.function.arguments) for c in one.choices[0].message.tool_calls] == [{"city": "Paris"}]
    # no tools offered: the same words are just text
    plain = client.chat.completions.create(**ask).choices[0]
    assert plain.finish_reason == "stop" and plain.message.tool_calls is None
    assert "get_weather" in plain.message.content


def test_tool_calls_streamed(api, scripted):
    client, _ = api
    scripted("qwen", REPLY)
    chunks = list(client.chat.completions.create(model="qwen", messages=CASES["tools"]["messages"], tools=[WEATHER],
                                                 max_tokens=200, temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls = [t for d in deltas for t in d.tool_calls or ()]
    assert [(t.index, t.function.name, json.loads(t.function.arguments)) for t in calls] == [
        (0, "get_weather", {"city": "Paris"}), (1, "get_weather", {"city": "Oslo"})]
    assert all(t.id.startswith("call_") for t in calls)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_unparsable_call_stays_text(api, scripted):
    client, _ = api
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    scripted("qwen-text", broken)
    r = client.chat.completions.create(model="qwen-text", messages=CASES["tools"]["messages"], tools=[WEATHER],
                                       max_tokens=200, temperature=0)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == broken
