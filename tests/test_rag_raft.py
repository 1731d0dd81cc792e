"""The retrieval prompt format (rag.context) and RAFT training data (`tailor data rag`)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from ragkit import QA, write_docs

from tailor.cli import main
from tailor.rag import Hit, Index, add_context, build_index, sources
from tailor.rag.context import INSTRUCTION

HITS = [Hit("Setup\n\nRun make.", "docs/guide.md", "Setup", 0.5, "docs/guide.md#0"),
        Hit("Intro > Why\n\nBecause.", "my \"best\" notes.md", "Intro > Why", 0.4, "x#1"),
        Hit('Use "quotes" & <tags>.', "notes.txt", "", 0.25, "notes.txt#3")]
BLOCKS = (f'{INSTRUCTION}\n<document source="docs/guide.md" heading="Setup">Setup\n\nRun make.</document>\n'
          '<document source="my \'best\' notes.md" heading="Intro > Why">Intro > Why\n\nBecause.</document>\n'
          '<document source="notes.txt" heading="">Use "quotes" & <tags>.</document>')


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raft")
    write_docs(root / "docs")
    build_index([root / "docs"], root / "idx", progress=False)
    return root / "idx"


# -- the prompt format ------------------------------------------------------------------------------
def test_system_style_inserts_or_merges_a_system_message():
    messages = [{"role": "user", "content": "How do I set up?"}]
    assert add_context(messages, HITS) == [{"role": "system", "content": BLOCKS}, messages[0]]
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    got = add_context(with_system, HITS, "system")
    assert got[0] == {"role": "system", "content": f"Be brief.\n\n{BLOCKS}"} and got[1:] == messages
    assert with_system[0]["content"] == "Be brief."  # the caller's list is not touched


def test_user_style_prefixes_the_latest_user_turn_and_no_hits_changes_nothing():
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "second"}]
    got = add_context(messages, HITS, "user")
    assert got[:2] == messages[:2] and got[2] == {"role": "user", "content": f"{BLOCKS}\n\nsecond"}
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert add_context(parts, HITS, "user")[0]["content"][0] == {"type": "text", "text": BLOCKS}
    same = add_context(messages, [])
    assert same == messages and same is not messages
    with pytest.raises(ValueError, match="system, user"):
        add_context(messages, HITS, "assistant")


def test_sources_are_json_ready():
    assert json.loads(json.dumps(sources(HITS)))[2] == {"source": "notes.txt", "heading": "", "score": 0.25,
                                                        "chunk_id": "notes.txt#3", "text": 'Use "quotes" & <tags>.'}


# -- RAFT data --------------------------------------------------------------------------------------
def write_questions(path: Path, repeat: int = 1, with_source: bool = True) -> Path:
    rows = [{"question": q, "answer": a, **({"source": d} if with_source else {})} for q, a, d in QA] * repeat
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def examples(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text().splitlines()]


def test_rag_data_passes_data_check_and_holds_the_oracle_in_p_of_examples(tmp_path, index_path, capsys):
    questions = write_questions(tmp_path / "q.jsonl", repeat=20)
    out = tmp_path / "train.jsonl"
    code, printed, _ = data(capsys, "rag", index_path, questions, "--out", out, "--p", "0.8")
    assert code == 0
    reported = int(re.search(r"200 examples, (\d+) with the oracle chunk", printed).group(1))
    rows = examples(out)
    answers = [a for _, a, _ in QA] * 20
    # Distractors never contain the answer, so "the answer is in the context" = "the oracle is there".
    holding = sum(a in m[0]["content"] for m, a in zip(rows, answers))
    assert holding == reported
    assert abs(reported / 200 - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / 200)
    assert data(capsys, "check", out)[0] == 0

    again = tmp_path / "again.jsonl"
    data(capsys, "rag", index_path, questions, "--out", again, "--p", "0.8")
    assert again.read_text() == out.read_text()  # same seed, same file
    data(capsys, "rag", index_path, questions, "--out", again, "--p", "0.8", "--seed", "1")
    assert again.read_text() != out.read_text()


@pytest.mark.parametrize("p, expected", [("1", 10), ("0", 0)])
def test_p_one_and_zero_are_exact(tmp_path, index_path, capsys, p, expected):
    out = tmp_path / "t.jsonl"
    code, printed, _ = data(capsys, "rag", index_path, write_questions(tmp_path / "q.jsonl"), "--out", out, "--p", p)
    assert code == 0 and f"10 examples, {expected} with the oracle" in printed
    assert sum(a in m[0]["content"] for m, (_, a, _) in zip(examples(out), QA)) == expected


def test_examples_use_the_serving_format_and_quote_the_oracle(tmp_path, index_path, capsys):
    out = tmp_path / "t.jsonl"
    data(capsys, "rag", index_path, write_questions(tmp_path / "q.jsonl", with_source=False), "--out", out,
         "--p", "1", "--distractors", "3")
    with Index.open(index_path) as index:
        by_text = {h.text: h for h in index.chunks()}
        for messages, (question, answer, doc) in zip(examples(out), QA):
            assert [m["role"] for m in messages] == ["system", "user", "assistant"]
            texts = re.findall(r'<document source="[^"]*" heading="[^"]*">(.*?)</document>',
                               messages[0]["content"], re.S)
            hits = [by_text[t] for t in texts]
            assert len(hits) == 4 and len({h.chunk_id for h in hits}) == 4
            assert messages[:2] == add_context([{"role": "user", "content": question}], hits)
            [oracle] = [h for h in hits if answer in h.text]
            assert oracle.source == f"docs/{doc}"
            said = re.fullmatch(r'According to (\S+): "(.+)"\nAnswer: (.+)', messages[2]["content"], re.S)
            assert said and said.group(1) == oracle.source and said.group(3) == answer
            assert answer in said.group(2) and said.group(2) in oracle.text
            top_other = next(h for h in index.search(question, 5) if h.chunk_id != oracle.chunk_id)
            assert top_other.chunk_id in {h.chunk_id for h in hits}  # a hard distractor


def test_without_the_oracle_the_target_is_the_bare_answer(tmp_path, index_path, capsys):
    out = tmp_path / "t.jsonl"
    data(capsys, "rag", index_path, write_questions(tmp_path / "q.jsonl"), "--out", out, "--p", "0",
         "--distractors", "2", "--style", "user")
    for messages, (question, answer, _) in zip(examples(out), QA):
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"].count("<document ") == 3 and messages[0]["content"].endswith(question)
        assert messages[1]["content"] == f"Answer: {answer}"


def test_the_quote_is_the_shortest_run_of_whole_sentences_holding_the_answer():
    from tailor.rag.raft import Question, quote

    text = ("Wren > Crew\n\nThe Wren launched in 2041. The lead scientist of\nthe mission is Dr. Anouk Feld. "
            "The probe weighs 640\nkilograms.\n\n- Budget: 9 million, e.g. for fuel.")
    oracle = Hit(text, "wren.md", "Wren > Crew", 0.0, "wren.md#0")

    def said(answer):
        return quote(None, oracle, Question(1, "q", answer, None))  # no embedding needed: answer is there

    assert said("Anouk Feld") == "The lead scientist of the mission is Dr. Anouk Feld."
    assert said("640 kilograms") == "The probe weighs 640 kilograms."
    assert said("Feld. The probe") == "The lead scientist of the mission is Dr. Anouk Feld. The probe weighs 640 kilograms."
    assert said("9 million") == "- Budget: 9 million, e.g. for fuel."


def test_the_answer_must_be_written_out_as_whole_words():
    from tailor.rag.raft import holds

    assert holds("It has Two  moons.", "two moons") and holds("Cost: 38,000 credits", "38,000 credits")
    assert not holds("a network of 4125 nodes", "two") and not holds("4125", "412")


def test_bad_questions_are_listed_with_their_lines(tmp_path, index_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "ok?", "answer": "yes"}\nnot json\n{"question": "", "answer": "x"}\n'
                         '{"question": "q", "answer": "a", "source": 7}\n["list"]\n')
    code, _, err = data(capsys, "rag", index_path, questions, "--out", tmp_path / "t.jsonl")
    assert code == 1 and "Traceback" not in err
    for line, what in [(2, "not valid JSON"), (3, "field 'question' must be a non-empty string"),
                       (4, "field 'source' must be a string"), (5, "must be a JSON object")]:
        assert f"q.jsonl:{line}: {what}" in err
    questions.write_text('{"question": "q", "answer": "a", "source": "missing.md"}\n')
    code, _, err = data(capsys, "rag", index_path, questions, "--out", tmp_path / "t.jsonl")
    assert code == 1 and "line 1: source 'missing.md' is not in the index" in err
    assert not (tmp_path / "t.jsonl").exists()
    code, _, err = data(capsys, "rag", tmp_path / "nope", questions, "--out", tmp_path / "t.jsonl")
    assert code == 1 and "no index here" in err
