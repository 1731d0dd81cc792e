import subprocess
import sys

import pytest

from tailor.cli import main


def test_generate_greedy_is_deterministic(tiny_model_dir, capsys):
    args = ["generate", "--model", str(tiny_model_dir), "--temperature", "0", "--max-new-tokens", "12", "Hello"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert len(first) > 1  # random weights: the text may be whitespace, but something came out


def test_generate_seeded_sampling_repeats(tiny_model_dir, capsys):
    args = ["generate", "--model", str(tiny_model_dir), "--temperature", "1.0", "--seed", "7",
            "--max-new-tokens", "12", "Hello"]
    main(args)
    a = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == a


def test_system_prompt_changes_prompt_ids(tiny_model_dir):
    from tailor import models
    from tailor.data.templates import render_prompt

    tok = models.load_tokenizer(str(tiny_model_dir))
    plain = render_prompt(tok, [{"role": "user", "content": "Hi"}])
    sys_ = render_prompt(tok, [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi"}])
    assert plain != sys_
    assert "Be a pirate." in tok.decode(sys_)


def test_generate_missing_model_is_clean_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tailor.cli", "generate", "--model", str(tmp_path / "nope"), "hi"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "not found" in r.stderr


def test_chat_piped(tiny_model_dir):
    stdin = "Hello there\n/system Be brief.\nAnother turn\n/reset\n/exit\nnever read\n"
    r = subprocess.run([sys.executable, "-m", "tailor.cli", "chat", "--model", str(tiny_model_dir),
                        "--temperature", "0", "--max-new-tokens", "5"], input=stdin, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(system prompt set)" in r.stdout and "(conversation cleared)" in r.stdout
    before, after = r.stdout.split("(system prompt set)\n")
    assert before.endswith("\n")  # the first reply, then the marker
    assert after.endswith("(conversation cleared)\n")  # nothing is answered after /exit


def test_chat_eof_exits_cleanly(tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "tailor.cli", "chat", "--model", str(tiny_model_dir)],
                       input="", capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_stop_string_cuts_reply():
    from tailor.infer.chat import _partial_suffix

    assert _partial_suffix("hello wor", "world") == 3
    assert _partial_suffix("hello", "xyz") == 0


@pytest.mark.integration
def test_default_model_answers_four():
    r = subprocess.run([sys.executable, "-m", "tailor.cli", "generate", "--temperature", "0",
                        "--max-new-tokens", "40", "What is 2 + 2?"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "4" in r.stdout


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                             "maximum": 9}},
          "required": ["ok", "n"], "additionalProperties": False}


def test_generate_and_chat_with_a_json_schema(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import io
    import json

    import jsonschema

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    args = ["generate", "--model", str(tiny_model_dir), "--json-schema", str(schema), "--max-new-tokens", "40",
            "--temperature", "1.0", "--seed", "3", "Hello"]
    assert main(args) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), SCHEMA)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\nAgain\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--json-schema", str(schema), "--max-new-tokens", "40"]) == 0
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(replies) == 2 and all(jsonschema.validate(x, SCHEMA) is None for x in replies)


@pytest.mark.parametrize("content, words", [("{not json", ["not JSON"]), ("[1, 2]", ["object"]),
                                             ('{"type": "object", "not": {}}', ["not"]),
                                             ('{"$ref": "/etc/hosts"}', ["$ref", "inside the schema"])])
def test_a_bad_json_schema_file_is_a_clean_error(tiny_model_dir, tmp_path, capsys, content, words):
    schema = tmp_path / "schema.json"
    schema.write_text(content)
    assert main(["generate", "--model", str(tiny_model_dir), "--json-schema", str(schema), "hi"]) == 1
    err = capsys.readouterr().err
    assert str(schema) in err and all(w in err for w in words), err
