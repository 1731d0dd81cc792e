"""Reading and validating JSONL files: formats, and every problem with its line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailor.data import DataError, conversations, formats

FILES = Path(__file__).parent / "data_files"


def write(tmp_path, lines, name="d.jsonl") -> Path:
    path = tmp_path / name
    data = b"".join((ln if isinstance(ln, bytes) else (ln if isinstance(ln, str) else json.dumps(ln)).encode())
                    + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def chat(*pairs, **extra):
    msgs = []
    for user, reply in pairs:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": msgs, **extra}


def found(parsed) -> set[tuple[int, str, str]]:
    return {(p.line, p.path, p.kind) for p in parsed.problems.items}


def test_clean_file_has_no_problems():
    parsed = formats.read(FILES / "clean.jsonl")
    assert parsed.format == "chat" and parsed.problems.items == []
    assert len(parsed.conversations) == 11
    tool_conv = parsed.conversations[-1]
    assert tool_conv.tools and tool_conv.messages[1].extra["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    weighted = parsed.conversations[4]
    assert [m.train for m in weighted.messages if m.role == "assistant"] == [False, True]


def test_every_problem_is_reported_with_line_and_field():
    parsed = formats.read(FILES / "problems.jsonl")
    assert {
        (2, "", "invalid_json"), (3, "", "data_type"), (4, "", "blank_line"),
        (5, "messages[0].content", "missing_content"), (5, "messages[1].weight", "invalid_weight"),
        (6, "messages[0].role", "unrecognized_role"), (6, "messages[1].foo", "message_unrecognized_key"),
        (7, "messages", "example_missing_assistant_message"), (8, "messages", "nothing_to_train"),
        (9, "messages[1]", "tool_without_call"), (10, "", "duplicate_example"), (11, "", "mixed_formats"),
        (12, "messages[0].role", "message_missing_key"), (12, "messages[1].content", "wrong_type"),
        (13, "", "not_utf8"),
    } <= found(parsed)
    # every error carries a fix
    assert all(p.fix for p in parsed.problems.items)
    assert parsed.problems.error_count == 13


def test_invalid_json_names_the_column(tmp_path):
    parsed = formats.read(write(tmp_path, ['{"messages": [}']))
    (p,) = parsed.problems.errors
    assert p.kind == "invalid_json" and "column 15" in p.message


def test_bom_and_crlf_are_warnings(tmp_path):
    line = json.dumps(chat(("hi", "hello")))
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (line + "\r\n").encode() * 2)
    parsed = formats.read(path)
    kinds = parsed.problems.by_kind("warning")
    assert kinds["bom"] == 1 and kinds["crlf"] == 1 and parsed.problems.error_count == 0
    assert len(parsed.conversations) == 2


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n\n")
    parsed = formats.read(path)
    assert [p.kind for p in parsed.problems.errors] == ["empty_file"]


def test_too_few_examples_and_duplicates_warn(tmp_path):
    parsed = formats.read(write(tmp_path, [chat(("a", "b"))] * 3))
    kinds = parsed.problems.by_kind("warning")
    assert kinds["too_few_examples"] == 1 and kinds["duplicate_example"] == 2
    many = formats.read(write(tmp_path, [chat((f"q{i}", "b")) for i in range(10)], "m.jsonl"))
    assert many.problems.items == []


def test_tool_calls_are_checked(tmp_path):
    good_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}
    bad_args = {"id": "c2", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    lines = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [good_call]},
                      {"role": "tool", "tool_call_id": "zzz", "content": "1"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [bad_args]}]},
        {"messages": [{"role": "user", "content": "q", "tool_calls": [good_call]}, {"role": "assistant", "content": "a"}]},
    ]
    parsed = formats.read(write(tmp_path, lines))
    assert (1, "messages[2]", "tool_without_call") in found(parsed)
    assert (2, "messages[1].tool_calls[0].function.arguments", "invalid_tool_call") in found(parsed)
    assert (3, "messages[0].tool_calls", "wrong_type") in found(parsed)


def test_weight_only_on_assistant_and_only_0_or_1(tmp_path):
    lines = [{"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
             {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}]},
             {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}]
    parsed = formats.read(write(tmp_path, lines))
    assert {(1, "messages[0].weight"), (2, "messages[1].weight"), (3, "messages[1].weight")} == {
        (p.line, p.path) for p in parsed.problems.errors}


def test_content_parts_are_joined(tmp_path):
    line = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                         {"role": "assistant", "content": "c"}]}
    (conv,) = formats.read(write(tmp_path, [line])).conversations
    assert conv.messages[0].content == "ab"


def test_other_formats_become_chat(tmp_path):
    pc = formats.read(write(tmp_path, [{"prompt": "p", "completion": "c"}], "pc.jsonl"))
    assert pc.format == "prompt_completion"
    assert [(m.role, m.content, m.train) for m in pc.conversations[0].messages] == [
        ("user", "p", False), ("assistant", "c", True)]
    al = formats.read(write(tmp_path, [{"instruction": "Do it", "input": "data", "output": "done"}], "al.jsonl"))
    assert al.format == "alpaca"
    assert [(m.role, m.content) for m in al.conversations[0].messages] == [("user", "Do it\n\ndata"),
                                                                          ("assistant", "done")]
    sg = formats.read(write(tmp_path, [{"conversations": [{"from": "system", "value": "s"},
                                                           {"from": "human", "value": "h"},
                                                           {"from": "gpt", "value": "g"}]}], "sg.jsonl"))
    assert sg.format == "sharegpt"
    assert [(m.role, m.train) for m in sg.conversations[0].messages] == [
        ("system", False), ("user", False), ("assistant", True)]


def test_other_formats_report_their_problems(tmp_path):
    lines = [{"instruction": "x", "output": ""}, {"instruction": 3, "output": "y"}]
    parsed = formats.read(write(tmp_path, lines))
    assert {(1, "output", "missing_content"), (2, "instruction", "wrong_type")} <= found(parsed)
    sg = formats.read(write(tmp_path, [{"conversations": [{"from": "bot", "value": "x"}]}], "s.jsonl"))
    assert (1, "conversations[0].from", "unrecognized_role") in found(sg)


def test_mixed_formats_name_the_first_line_that_differs(tmp_path):
    lines = [chat(("a", "b")), chat(("c", "d")), {"prompt": "p", "completion": "c"},
             {"instruction": "i", "output": "o"}]
    parsed = formats.read(write(tmp_path, lines))
    (p,) = [p for p in parsed.problems.errors if p.kind == "mixed_formats"]
    assert p.line == 3 and "prompt/completion" in p.message and "OpenAI chat" in p.message


def test_conversations_raises_data_error_with_the_report(tmp_path):
    path = write(tmp_path, [chat(("a", "b")), "nope"])
    with pytest.raises(DataError) as err:
        conversations(path)
    assert "line 2" in str(err.value) and "invalid_json" in str(err.value)


def test_missing_file_is_a_problem_not_a_traceback(tmp_path):
    parsed = formats.read(tmp_path / "absent.jsonl")
    assert [p.kind for p in parsed.problems.errors] == ["file_not_found"]
