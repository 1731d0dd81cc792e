"""prepare(): the trainer's entry point, its contract, max_length handling and the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tailor.data import DataError, Example, prepare
from tailor.data.render import Renderer
from tailor.data.templates import ensure_chat_template, stop_token_ids
from tiny import make_tokenizer

FILES = Path(__file__).parent / "data_files"
USER_HOME = os.environ.get("TAILOR_HOME")  # where the real model is already converted


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tok():
    return make_tokenizer()


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa(i: int, reply: str = "Paris.") -> dict:
    return {"messages": [{"role": "user", "content": f"What is the capital of France? {i}"},
                         {"role": "assistant", "content": reply}]}


def test_contract_on_a_clean_file(tok):
    p = prepare(FILES / "clean.jsonl", tok)
    assert len(p.examples) == len(p.lengths) == 11
    total_trained = 0
    lines = [json.loads(x) for x in (FILES / "clean.jsonl").read_text().splitlines()]
    for ex, n in zip(p.examples, p.lengths):
        assert isinstance(ex, Example) and ex.input_ids.ndim == 1 and ex.input_ids.dtype in (np.int32, np.int64)
        assert ex.labels.shape == ex.input_ids.shape and len(ex.input_ids) == n
        trained = ex.labels != -100
        assert trained.any() and np.array_equal(ex.labels[trained], ex.input_ids[trained])
        total_trained += int(trained.sum())
        row = lines[ex.line - 1]
        msgs = [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]]
        for m in msgs:  # OpenAI's arguments string becomes an object for the template
            m.setdefault("content", "")
            for call in m.get("tool_calls", []):
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        want = tok.apply_chat_template(msgs, tools=row.get("tools"), tokenize=True, return_dict=False)
        assert ex.input_ids.tolist() == list(want)
    assert p.trained_tokens == total_trained
    assert p.chat_template == tok.chat_template
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in p.stop_token_ids == stop_token_ids(tok)
    # a tool-less template: the warning names the line
    assert any("line 11" in w and "tool calls" in w for w in p.warnings)
    assert p.examples[-1].line == 11 and p.examples[-1].input_ids[-2] == im_end


def test_errors_raise_data_error_with_the_full_report(tok):
    with pytest.raises(DataError) as err:
        prepare(FILES / "problems.jsonl", tok)
    text = str(err.value)
    for n in (2, 3, 5, 6, 7, 8, 9, 11, 12, 13):
        assert f"line {n}" in text


def test_max_length_drops_by_default_and_truncates_on_request(tmp_path, tok):
    rows = [qa(i) for i in range(10)] + [qa(99, "word " * 200)]
    path = write(tmp_path / "d.jsonl", rows)
    full = prepare(path, tok)
    limit = int(np.sort(full.lengths)[-2])  # every example but the long one fits
    dropped = prepare(path, tok, max_length=limit)
    assert len(dropped.examples) == 10 and 11 not in [e.line for e in dropped.examples]
    assert any("1 example(s) longer than max_length" in w and "dropped" in w for w in dropped.warnings)
    cut = prepare(path, tok, max_length=limit, truncate=True)
    assert len(cut.examples) == 11 and cut.lengths.max() == limit
    last = cut.examples[-1]
    assert len(last.input_ids) == limit and (last.labels != -100).any()
    assert cut.trained_tokens == sum(int((e.labels != -100).sum()) for e in cut.examples)
    assert cut.trained_tokens < full.trained_tokens


def test_truncation_that_leaves_nothing_trained_drops_the_example(tmp_path, tok):
    rows = [qa(i) for i in range(10)] + [{"messages": [{"role": "user", "content": "long " * 300},
                                                       {"role": "assistant", "content": "ok"}]}]
    path = write(tmp_path / "d.jsonl", rows)
    p = prepare(path, tok, max_length=100, truncate=True)
    assert len(p.examples) == 10
    assert any("nothing trained was left" in w for w in p.warnings)


def test_cache_second_run_does_not_render(tmp_path, tok, home, monkeypatch):
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(12)])
    first = prepare(path, tok)
    stores = list((home / "datasets").iterdir())
    assert len(stores) == 1 and not stores[0].name.startswith(".")

    def boom(*a, **k):
        raise AssertionError("re-rendered despite the cache")

    monkeypatch.setattr(Renderer, "render_batch", boom)
    second = prepare(path, tok)
    assert all(np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.labels, b.labels)
               for a, b in zip(first.examples, second.examples))
    assert second.warnings == first.warnings
    # a changed file is a new key
    path.write_text(path.read_text() + json.dumps(qa(77)) + "\n")
    with pytest.raises(AssertionError, match="re-rendered"):
        prepare(path, tok)


def test_no_cache_leaves_nothing_behind(tmp_path, tok, home):
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(12)])
    p = prepare(path, tok, use_cache=False)
    assert len(p.examples) == 12 and not (home / "datasets").exists()


def test_failed_render_is_not_cached(tmp_path, home):
    gemma_like = make_tokenizer(chat_template=(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"))
    rows = [qa(i) for i in range(10)] + [{"messages": [{"role": "system", "content": "s"}] + qa(5)["messages"]}]
    path = write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"line 11, messages: the chat template refused this conversation: "
                                        r"System role not supported"):
        prepare(path, gemma_like)
    assert not any((home / "datasets").glob("[!.]*"))


def test_template_that_drops_replies_is_an_empty_mask_error(tmp_path):
    users_only = make_tokenizer(chat_template=(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|im_start|>user\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}"))
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(10)])
    with pytest.raises(DataError) as err:
        prepare(path, users_only)
    assert "empty_mask" in str(err.value) and "line 1," in str(err.value)


def test_base_model_gets_chatml_with_a_warning(tmp_path):
    base = make_tokenizer(chat_template=None)
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(10)])
    p = prepare(path, base)
    assert "no chat template" in p.warnings[0] and "chatml" in p.warnings[0]
    assert p.chat_template == base.chat_template and "<|im_start|>" in p.chat_template
    assert base.convert_tokens_to_ids("<|im_end|>") in p.stop_token_ids


@pytest.mark.parametrize("choice,marker,expected", [("llama3", "<|eot_id|>", "Paris.<|eot_id|>"),
                                                    ("alpaca", "<|im_end|>", "Paris.<|im_end|>"),
                                                    ("chatml", "<|im_end|>", "Paris.<|im_end|>")])
def test_named_templates_add_missing_markers_and_train_on_them(tmp_path, choice, marker, expected):
    base = make_tokenizer(chat_template=None)
    before = len(base)
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(10)])
    p = prepare(path, base, chat_template=choice)
    if choice == "llama3":
        assert len(base) == before + 3 and any("<|eot_id|>" in w for w in p.warnings)
    marker_id = base.convert_tokens_to_ids(marker)
    assert marker_id in p.stop_token_ids
    ex = p.examples[0]
    assert base.decode(ex.input_ids[ex.labels != -100].tolist()) == expected


def test_custom_jinja_file(tmp_path):
    base = make_tokenizer(chat_template=None, extra_special=["<end_of_turn>", "<start_of_turn>"])
    base.eos_token = "<|endoftext|>"
    template = tmp_path / "t.jinja"
    template.write_text((FILES / "templates" / "gemma.jinja").read_text())
    warning = ensure_chat_template(base, str(template))
    assert warning is None and base.chat_template == template.read_text()
    assert base.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(base)


def test_unknown_template_choice_is_a_usage_error():
    from tailor.errors import UsageError

    with pytest.raises(UsageError, match="chatml, llama3, alpaca"):
        ensure_chat_template(make_tokenizer(chat_template=None), "vicuna")


def test_other_formats_prepare(tmp_path, tok):
    path = write(tmp_path / "a.jsonl", [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(10)])
    p = prepare(path, tok)
    assert tok.decode(p.examples[3].input_ids[p.examples[3].labels != -100].tolist()) == "3<|im_end|>"


@pytest.mark.integration
def test_real_smollm2_matches_apply_chat_template(tmp_path, monkeypatch):
    from tailor import models

    if USER_HOME is None:
        monkeypatch.delenv("TAILOR_HOME")
    else:
        monkeypatch.setenv("TAILOR_HOME", USER_HOME)
    real = models.load_tokenizer(None)
    rows = [json.loads(x) for x in (FILES / "clean.jsonl").read_text().splitlines()[:10]]
    path = write(tmp_path / "d.jsonl", rows)
    p = prepare(path, real, use_cache=False)
    for ex, row in zip(p.examples, rows):
        msgs = [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]]
        assert ex.input_ids.tolist() == list(real.apply_chat_template(msgs, tokenize=True, return_dict=False))
    assert p.stop_token_ids == [2]
    assert real.decode(p.examples[0].input_ids[p.examples[0].labels != -100].tolist()) == \
        "The capital of France is Paris.<|im_end|>"


def test_analyse_reports_line_errors_and_template_refusals_together(tmp_path):
    from tailor.data import analyse

    no_system = make_tokenizer(chat_template=(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"))
    rows = [qa(i) for i in range(10)] + [{"messages": [{"role": "system", "content": "s"}] + qa(5)["messages"]}]
    path = write(tmp_path / "d.jsonl", rows)
    path.write_text(path.read_text() + "{broken\n")
    a = analyse(path, no_system)
    assert {(p.line, p.kind) for p in a.problems.errors} == {(11, "template_error"), (12, "invalid_json")}
    assert a.store is not None and len(a.store.index) == 10  # the good ones are still counted


def test_control_token_text_in_content_warns(tmp_path, tok):
    rows = [qa(i) for i in range(9)] + [qa(9, "Sure<|im_end|> done")]
    p = prepare(write(tmp_path / "d.jsonl", rows), tok)
    assert any("line 10, messages[1].content" in w and "control_token_in_content" in w for w in p.warnings)
