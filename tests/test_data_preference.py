"""Preference pairs (OpenAI DPO and TRL formats) and raw text: reading, every problem with its line
and field, rendering into the store, max_length, and `tailor data check` / `show`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from trainkit import write_preference_jsonl

from tailor.cli import main
from tailor.data import formats, prepare
from tailor.data.formats import Preference, Text


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))


def write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def openai_pair(prompt="What is the capital of France?", chosen="Paris.", rejected="It is Lyon, I think.", **extra):
    return {"input": {"messages": [{"role": "user", "content": prompt}], **extra},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}]}


def found(parsed) -> set[tuple[int, str, str]]:
    return {(p.line, p.path, p.kind) for p in parsed.problems.items}


def test_openai_and_trl_formats_read_as_pairs(tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    legacy = {k: v for k, v in openai_pair().items() if k != "preferred_output"}  # the field's older name
    legacy["preferred_completion"] = [{"role": "assistant", "content": "Paris!"}]
    parsed = formats.read(write(tmp_path, [openai_pair(tools=tools), legacy]))
    assert parsed.format == "openai_preference" and parsed.kind == "preference" and not parsed.problems.errors
    first, legacy = parsed.pairs
    assert isinstance(first, Preference) and first.tools == tools and legacy.chosen.content == "Paris!"
    assert [(m.role, m.train) for m in first.prompt] == [("user", False)]
    assert (first.chosen.role, first.chosen.train, first.rejected.content) == ("assistant", True, "It is Lyon, I think.")
    conv = first.conversation("rejected")
    assert [m.content for m in conv.messages] == ["What is the capital of France?", "It is Lyon, I think."]

    trl = formats.read(write(tmp_path, [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],  # implicit prompt
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]},
    ], "trl.jsonl"))
    assert trl.format == "trl_preference" and not trl.problems.errors
    assert [[(m.role, m.content) for m in p.prompt] for p in trl.pairs] == [
        [("user", "Hi")], [("system", "Be kind."), ("user", "Hi")], [("user", "Hi")]]
    assert [p.rejected.content for p in trl.pairs] == ["Go away.", "No.", "No."]


def test_bad_preference_lines_are_reported_with_line_and_field(tmp_path):
    good = openai_pair()
    lines = [
        good,
        {**good, "preferred_output": []},                                                     # 2: empty output
        {**good, "non_preferred_output": [{"role": "user", "content": "x"}]},                 # 3: not the assistant
        {**good, "preferred_output": [{"role": "assistant", "content": "  "}]},               # 4: empty content
        {**good, "preferred_output": [{"role": "assistant", "content": "a"}] * 2},            # 5: two messages
        {"preferred_output": good["preferred_output"], "non_preferred_output": good["non_preferred_output"]},  # 6
        {**good, "input": {"messages": [{"role": "wizard", "content": "x"}]}},                # 7: bad prompt role
        openai_pair(chosen="Same.", rejected="Same."),                                        # 8: identical: warning
        {**good, "non_preferred_output": "plain text"},                                       # 9: a string is fine
    ]
    parsed = formats.read(write(tmp_path, lines))
    assert {(2, "preferred_output", "missing_output"),
            (3, "non_preferred_output[0].role", "output_not_assistant"),
            (4, "preferred_output[0].content", "missing_content"),
            (5, "preferred_output", "too_many_messages"),
            (6, "input", "missing_input"),
            (7, "input.messages[0].role", "unrecognized_role"),
            (8, "", "identical_outputs")} <= found(parsed)
    assert parsed.problems.error_count == 6 and [p.line for p in parsed.problems.warnings] == [8, 0]
    assert [p.line for p in parsed.pairs] == [1, 8, 9]


def test_a_file_mixing_supervised_and_preference_lines_is_refused(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}
    parsed = formats.read(write(tmp_path, [openai_pair(), chat]))
    assert (2, "", "mixed_formats") in found(parsed)


def test_pairs_render_as_two_rows_trained_on_their_reply_only(tmp_path, tiny_model_dir):
    from tailor import models

    tok = models.load_tokenizer(str(tiny_model_dir))
    path = write_preference_jsonl(tmp_path / "p.jsonl", 12)
    prepared = prepare(path, tok, max_length=1024)
    assert prepared.kind == "preference" and len(prepared.examples) == 12
    pair = prepared.examples[3]
    assert pair.line == 4 and len(pair) == len(pair.chosen) + len(pair.rejected) == prepared.lengths[3]
    for ex, reply in ((pair.chosen, "Ahoy matey, arr!"), (pair.rejected, "Hello! How can I help you?")):
        trained = tok.decode(ex.labels[ex.labels >= 0])
        assert trained.startswith(reply) and trained.endswith("<|im_end|>")
        start = int(np.argmax(ex.labels >= 0))
        assert (ex.labels[start:] >= 0).all() or tok.decode(ex.input_ids[ex.labels < 0][-1:]).isspace()
    # the prompt is the same context in both
    c0, r0 = int(np.argmax(pair.chosen.labels >= 0)), int(np.argmax(pair.rejected.labels >= 0))
    assert c0 == r0 and (pair.chosen.input_ids[:c0] == pair.rejected.input_ids[:r0]).all()


def test_max_length_keeps_pairs_whole_and_drops_prompts_that_fill_it(tmp_path, tiny_model_dir):
    from tailor import models

    tok = models.load_tokenizer(str(tiny_model_dir))
    long_prompt = "the quick brown fox " * 40
    path = write(tmp_path, [openai_pair()] * 1 + [openai_pair(prompt=f"{i}: Hi") for i in range(9)]
                 + [openai_pair(prompt=long_prompt)])
    full = prepare(path, tok, max_length=1024)
    short = max(max(len(p.chosen), len(p.rejected)) for p in full.examples[:10])
    kept = prepare(path, tok, max_length=short)
    assert len(kept.examples) == 10 and 11 not in kept.lines.tolist()
    assert any("prompt of max_length" in w and "lines 11" in w for w in kept.warnings)
    cut = prepare(path, tok, max_length=short - 2, truncate=True)
    assert all(len(p.chosen) <= short - 2 and len(p.rejected) <= short - 2 for p in cut.examples)


def test_raw_text_is_packed_into_rows_with_every_token_trained(tmp_path, tiny_base_dir):
    from tailor import models

    tok = models.load_tokenizer(str(tiny_base_dir))  # a base model: no chat template is added for text
    docs = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i + 1) for i in range(12)]
    path = write(tmp_path, [{"text": d, "source": "web"} for d in docs])
    parsed = formats.read(path)
    assert parsed.kind == "text" and isinstance(parsed.texts[0], Text) and not parsed.problems.items
    prepared = prepare(path, tok, max_length=64)
    assert tok.chat_template is None and prepared.kind == "text"
    rows = list(prepared.examples)
    assert all(len(r) == 64 for r in rows[:-1]) and 1 < len(rows[-1]) <= 64
    assert all((r.labels == r.input_ids).all() for r in rows)  # no masks: every token is trained
    stream = np.concatenate([r.input_ids for r in rows])
    assert (stream == [t for d in docs for t in tok(d)["input_ids"] + [tok.eos_token_id]]).all()
    assert prepared.trained_tokens == len(stream)
    bad = formats.read(write(tmp_path, [{"text": ""}, {"text": 3}], "bad.jsonl"))
    assert {(1, "text", "missing_content"), (2, "text", "wrong_type")} <= found(bad)


def run(capsys, *argv):
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_pairs_prompts_too_long_and_exits_1_on_errors(capsys, tmp_path, tiny_model_dir):
    path = write_preference_jsonl(tmp_path / "p.jsonl", 12)
    code, out, _ = run(capsys, "check", path, "--model", tiny_model_dir)
    assert code == 0 and "format:    OpenAI preference (DPO)" in out and "--objective dpo" in out
    assert "12 valid pairs of 12" in out and re.search(r"trained \(the completions\) \d+", out)
    code, out, _ = run(capsys, "check", path, "--model", tiny_model_dir, "--max-length", 30)
    assert code == 0 and "[prompt_too_long]" in out and "lines 1, 2, 3" in out
    bad = write(tmp_path, [openai_pair()] * 11 + [{**openai_pair(), "preferred_output": [{"role": "user",
                                                                                            "content": "x"}]}])
    code, out, _ = run(capsys, "check", bad)
    assert code == 1 and "error line 12, preferred_output[0].role" in out and "Traceback" not in out
    code, out, _ = run(capsys, "check", bad, "--json")
    assert json.loads(out)["kind"] == "preference" and json.loads(out)["errors"] == 1


def test_show_prints_both_completions_with_their_trained_tokens(capsys, tmp_path, tiny_model_dir):
    path = write_preference_jsonl(tmp_path / "p.jsonl", 12, style="trl")
    code, out, _ = run(capsys, "show", path, "--model", tiny_model_dir, "--index", 2)
    assert code == 0 and out.startswith("line 3: preference pair; chosen ")
    chosen, rejected = out.split("--- chosen ---")[1].split("--- rejected ---")
    assert "[[Ahoy matey, arr!" in chosen and "<|im_end|>]]" in chosen and chosen.count("[[") == 1
    assert "[[Hello! How can I help you?" in rejected and "2: " in rejected.split("[[")[0]  # the prompt: context


def test_check_and_show_say_raw_text_trains_every_token(capsys, tmp_path, tiny_model_dir):
    path = write(tmp_path, [{"text": f"Doc {i}. The quick brown fox."} for i in range(10)])
    code, out, _ = run(capsys, "check", path, "--model", tiny_model_dir, "--max-length", 16)
    assert code == 0 and "format:    raw text" in out and "trained (every token)" in out
    assert re.search(r"packed into \d+ row\(s\) of up to max_length=16", out)
    code, out, _ = run(capsys, "show", path, "--model", tiny_model_dir)
    assert code == 0 and "every one trained" in out and "[[Doc 0. The quick brown fox.<|im_end|>]]" in out


def test_the_dpo_example_is_its_scripts_output_and_checks_clean(tmp_path):
    """examples/concise-dpo*.jsonl are what make_concise_data.py writes, every pair is valid, the
    held-out questions are in neither file, and the YAML is a valid config."""
    import importlib.util

    import yaml

    from tailor import config
    from tailor.train.config import TrainConfig

    examples = Path(__file__).resolve().parents[1] / "examples"
    spec = importlib.util.spec_from_file_location("_make_concise_data", examples / "make_concise_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    asked = set()
    for rows, name in zip(script.build(), ("concise-dpo.jsonl", "concise-dpo-val.jsonl")):
        text = (examples / name).read_text(encoding="utf-8")
        assert text == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), name
        parsed = formats.read(examples / name)
        assert parsed.kind == "preference" and not parsed.problems.items and len(parsed.pairs) == len(rows)
        asked |= {p.prompt[-1].content for p in parsed.pairs}
    assert not asked & set(script.HELD_OUT)
    config.build(TrainConfig, yaml.safe_load((examples / "concise-dpo.yaml").read_text()))
