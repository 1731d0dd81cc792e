"""`tailor data check` and `tailor data show` from the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tailor.cli import main
from tailor.data.report import auto_epochs

FILES = Path(__file__).parent / "data_files"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_clean_file_exits_0_with_summary(capsys):
    code, out, _ = run(capsys, "check", FILES / "clean.jsonl")
    assert code == 0
    assert "0 error(s)" in out and "format:    OpenAI chat" in out and "11 valid of 11" in out
    assert f"epochs:    {auto_epochs(11)}" in out


def test_check_lists_every_problem_and_exits_1(capsys):
    code, out, _ = run(capsys, "check", FILES / "problems.jsonl")
    assert code == 1
    lines_named = {int(n) for n in re.findall(r"(?:error|warning) line (\d+)", out)}
    assert lines_named == set(range(2, 14))
    assert "13 error(s)" in out and "Fix:" in out and "Traceback" not in out


def test_check_with_model_reports_tokens(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "check", FILES / "clean.jsonl", "--model", tiny_model_dir, "--max-length", 60)
    assert code == 0
    assert re.search(r"tokens:    per example min \d+ / median [\d.]+ / p95 [\d.]+ / max \d+", out)
    assert re.search(r"total \d+, trained \(assistant\) \d+", out)
    assert re.search(r"over max_length=60: [1-9]\d* example\(s\), dropped", out)
    assert "too_long" in out


def test_check_json_is_one_object(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "check", FILES / "clean.jsonl", "--model", tiny_model_dir, "--json",
                       "--max-length", 60, "--truncate")
    data = json.loads(out)
    assert code == 0 and data["examples"] == 11 and data["errors"] == 0
    t = data["tokens"]
    assert t["per_example"]["min"] <= t["per_example"]["median"] <= t["per_example"]["p95"] <= t["per_example"]["max"]
    assert 0 < t["trained"] < t["total"]
    assert t["over_max_length_action"] == "truncated" and data["epochs_auto"] == auto_epochs(11)
    code, out, _ = run(capsys, "check", FILES / "problems.jsonl", "--json")
    data = json.loads(out)
    assert code == 1 and data["errors_by_kind"]["invalid_json"] == 1 and len(data["problems"]) == 16


def test_usage_mistakes_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "check", tmp_path / "absent.jsonl")
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "check", FILES / "clean.jsonl", "--max-length", 0)
    assert code == 2 and "--max-length" in err
    code, _, err = run(capsys, "check", FILES / "clean.jsonl", "--model", FILES / "clean.jsonl")
    assert code == 1 and "not a .gguf" in err
    code, _, err = run(capsys, "show", FILES / "clean.jsonl", "--index", 99)
    assert code == 2 and "out of range" in err


def test_show_marks_the_trained_tokens(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "show", FILES / "clean.jsonl", "--model", tiny_model_dir, "--line", 5)
    assert code == 0
    # weight 0 on "Tokyo.", weight 1 on "Rome.": only Rome is marked, with its end-of-turn
    body = out.split("\n", 1)[1]  # after the header and its legend
    assert "[[Rome.<|im_end|>]]" in body and "[[Tokyo" not in body and body.count("[[") == 1
    code, out, _ = run(capsys, "show", FILES / "clean.jsonl", "--model", tiny_model_dir, "--color", "always")
    assert "\033[1;32m" in out and "[[" not in out


def test_show_uses_the_chosen_template_for_a_base_model(capsys, tiny_base_dir):
    code, out, err = run(capsys, "show", FILES / "clean.jsonl", "--model", tiny_base_dir,
                         "--chat-template", "llama3")
    assert code == 0 and "<|start_header_id|>assistant<|end_header_id|>" in out
    assert "[[Answer" not in out and "<|eot_id|>]]" in out and "added special token" in err


@pytest.mark.parametrize("n,epochs", [(1, 25), (10, 10), (33, 3), (34, 3), (100, 3), (8333, 3), (8334, 2),
                                      (30000, 1)])
def test_auto_epochs_follows_openai(n, epochs):
    assert auto_epochs(n) == epochs
