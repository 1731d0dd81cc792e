"""Tool calls in a model's reply: the format a chat template teaches, and its parsing into
OpenAI's tool_calls (pure functions on text)."""

import json

import pytest

from tailor.data.templates import CHATML, LLAMA3
from tailor.data.toolcalls import HERMES, LLAMA3_JSON, detect_style, parse_tool_calls

QWEN_SNIPPET = ("{%- for tool_call in message.tool_calls %}{{- '\\n<tool_call>\\n{\"name\": \"' }}"
                "{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}"
                "{{- '}\\n</tool_call>' }}{%- endfor %}")
LLAMA31_SNIPPET = ("{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
                   "{{- '{\"name\": \"' + tool_call.name + '\", ' }}{{- '\"parameters\": ' }}"
                   "{{- tool_call.arguments | tojson }}{{- \"}\" }}{{- \"<|eot_id|>\" }}")


def test_detect_style_from_the_template_text():
    assert detect_style(QWEN_SNIPPET) == HERMES
    assert detect_style(LLAMA31_SNIPPET) == LLAMA3_JSON
    assert detect_style("{{ '<|python_tag|>' + code }}") == LLAMA3_JSON
    assert detect_style(CHATML) is None and detect_style(LLAMA3) is None and detect_style(None) is None


def _args(call):
    return json.loads(call["arguments"])


def test_hermes_calls_and_the_text_around_them():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET", "n": 2}}\n</tool_call>')
    content, calls = parse_tool_calls(text, HERMES)
    assert content == "Let me check."
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert _args(calls[0]) == {"city": "Paris"} and _args(calls[1]) == {"tz": "CET", "n": 2}
    assert isinstance(calls[0]["arguments"], str)  # OpenAI's arguments are a JSON string


def test_hermes_only_calls_gives_no_content_and_tolerates_a_missing_close():
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": "日本"}}', HERMES)
    assert content is None and calls == [{"name": "f", "arguments": '{"x": "日本"}'}]
    # arguments already encoded as a JSON string are kept as they are
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', HERMES)
    assert calls == [{"name": "f", "arguments": '{"x": 1}'}]


@pytest.mark.parametrize("text", [
    "Just an answer, no calls.",
    '<tool_call>{"name": "f", "arguments": {"x": </tool_call>',  # broken JSON
    '<tool_call>{"arguments": {}}</tool_call>',  # no name
    '<tool_call>["f"]</tool_call>',
    '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
])
def test_hermes_text_that_is_not_a_valid_call_stays_text(text):
    assert parse_tool_calls(text, HERMES) == (text, [])


def test_llama3_json_calls():
    content, calls = parse_tool_calls(' {"name": "get_weather", "parameters": {"city": "Paris"}}', LLAMA3_JSON)
    assert content is None and calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    text = '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"k": [1, 2]}}'
    _, calls = parse_tool_calls(text, LLAMA3_JSON)
    assert [c["name"] for c in calls] == ["a", "b"] and _args(calls[1]) == {"k": [1, 2]}


@pytest.mark.parametrize("text", [
    "The answer is 4.",
    '{"name": "f", "parameters": {}} and then some words',
    '<|python_tag|>brave_search.call(query="weather")',  # a built-in tool call: Python, not JSON
    '{"answer": 4}',
])
def test_llama3_text_that_is_not_a_call_stays_text(text):
    assert parse_tool_calls(text, LLAMA3_JSON) == (text, [])
