"""`tailor eval`: the scores on hand-made strings, then the command on a tiny random model
(deterministic, the reference loss checked against the model by hand), with a real index, with
an LLM judge served by tailor, and its errors."""

import json

import pytest

from tailor.cli import main
from tailor.evaluate.judge import parse_verdict
from tailor.evaluate.scoring import contains, exact_match, final_answer, normalize

# -- scores on hand-made inputs ----------------------------------------------------------------


def test_normalize_drops_case_punctuation_articles_and_spacing():
    assert normalize("  The Quick,  brown FOX! ") == "quick brown fox"
    assert normalize("An apple a day") == "apple day"
    assert normalize("1,200 km.") == "1200 km"
    assert normalize("theme") == "theme"  # "the" only as a word


def test_exact_match_takes_the_whole_output_or_its_final_answer():
    assert exact_match("Paris.", "paris")
    assert not exact_match("It is Paris.", "Paris")
    # RAFT-trained models reason first and end with "Answer: X"; the last marker counts
    assert exact_match('The document says ##begin_quote##Paris##end_quote##. Answer: Paris', "Paris")
    assert exact_match("answer: no. <ANSWER>: the Lyon", "Lyon")
    assert not exact_match("Answer: Paris, France", "Paris")
    assert final_answer("no marker here") is None
    assert final_answer("Answer: 42\n") == "42"


def test_contains_matches_whole_words_of_the_normalised_reference():
    assert contains("I think it is in Paris, France.", "paris")
    assert contains("The Zorblax-9 launched in 2041.", "zorblax-9")
    assert not contains("It was 1940.", "4")
    assert not contains("anything", "  ")
    assert not contains("Lyon", "Paris")


def test_judge_verdicts_parse_yes_and_no_and_nothing_else():
    assert parse_verdict("Yes.") is True
    assert parse_verdict(" no, it is wrong") is False
    assert parse_verdict("**Correct**") is True
    assert parse_verdict("maybe") is None
    assert parse_verdict("") is None


# -- the command on a tiny model ---------------------------------------------------------------

QUESTIONS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "Hello! How can I help you today?", "answer": "The quick brown fox", "source": "x.md"},
    {"question": "Translate to French: merci", "answer": 42},
]


def _write_qa(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    return _write_qa(tmp_path_factory.mktemp("qa") / "qa.jsonl", QUESTIONS)


def _eval(model, qa, out, *extra):
    code = main(["eval", str(model), str(qa), "--dtype", "float32", "--max-new-tokens", "8", "--out", str(out),
                 *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_eval_is_deterministic_and_draws_its_chart(tiny_model_dir, qa_file, tmp_path, capsys):
    first = _eval(tiny_model_dir, qa_file, tmp_path / "a.json")
    second = _eval(tiny_model_dir, qa_file, tmp_path / "b.json")
    assert first == second
    assert [c["name"] for c in first["conditions"]] == ["model"]
    rows = first["conditions"][0]["rows"]
    assert [r["reference"] for r in rows] == ["Paris", "The quick brown fox", "42"]
    assert all(r["ref_loss"] > 0 and r["ref_tokens"] >= 2 for r in rows)
    summary = first["conditions"][0]["summary"]
    assert summary["n"] == 3 and "judge" not in summary
    assert summary["ref_loss"] == pytest.approx(sum(r["ref_loss"] for r in rows) / 3)
    assert summary["exact"] == sum(r["exact"] for r in rows) / 3
    png = tmp_path / "a.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "exact" in out and "ref loss" in out and "model" in out


def test_reference_loss_is_the_models_own_nll_of_the_trained_answer_tokens(tiny_model_dir):
    """By hand: the reply tokens that the chat template writes after the generation prompt (the
    answer and <|im_end|>), scored by the HF model directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailor.evaluate.qa import EvalConfig, Scorer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    full_text = tok.apply_chat_template(messages + [{"role": "assistant", "content": "Paris"}], tokenize=False)
    ids = tok(full_text.rstrip("\n"), add_special_tokens=False)["input_ids"]  # the newline after <|im_end|> is layout
    assert ids[:len(prompt)] == prompt and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    targets = torch.tensor(ids[len(prompt):])
    expected = torch.nn.functional.cross_entropy(logits[len(prompt) - 1:-1], targets).item()

    scorer = Scorer.load(EvalConfig(model=str(tiny_model_dir), dtype="float32"))
    loss, n = scorer.reference_loss(messages, "Paris")
    assert n == len(targets)
    assert loss == pytest.approx(expected, rel=1e-4)


def test_compare_joins_earlier_results_in_table_and_chart(tiny_model_dir, qa_file, tmp_path, capsys):
    _eval(tiny_model_dir, qa_file, tmp_path / "base.json", "--name", "base")
    capsys.readouterr()
    _eval(tiny_model_dir, qa_file, tmp_path / "tuned.json", "--name", "tuned", "--compare",
          str(tmp_path / "base.json"), "--plot", str(tmp_path / "both.png"))
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[2:4]] == ["base", "tuned"]
    assert (tmp_path / "both.png").stat().st_size > 1000


# -- errors ------------------------------------------------------------------------------------


def test_bad_qa_lines_exit_1_naming_file_line_and_field(tiny_model_dir, tmp_path, capsys):
    qa = tmp_path / "bad.jsonl"
    qa.write_text('{"question": "ok?", "answer": "yes"}\n{"question": "no answer"}\nnot json\n'
                  '{"question": "", "answer": "x"}\n')
    assert main(["eval", str(tiny_model_dir), str(qa)]) == 1
    err = capsys.readouterr().err
    assert f"{qa}:2: answer: missing" in err
    assert f"{qa}:3: invalid JSON" in err
    assert f"{qa}:4: question: empty" in err
    assert "Traceback" not in err


def test_missing_results_file_for_compare_is_a_clear_error(tiny_model_dir, qa_file, tmp_path, capsys):
    assert main(["eval", str(tiny_model_dir), str(qa_file), "--compare", str(tmp_path / "nope.json")]) == 1
    assert "no such results file" in capsys.readouterr().err


# -- with retrieval ----------------------------------------------------------------------------

DOCS = {
    "zorblax.md": "# Zorblax\n\nThe Zorblax-9 is a lunar rover. It was built in the town of Quenmire in 2041.\n",
    "tovar.md": "# Tovar\n\nTovar is a planet with two moons, Ash and Quell. A year there lasts 312 days.\n",
    "stew.md": "# Lunch\n\nEvery Friday the canteen serves Orbit Stew, a lentil stew.\n",
}


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    """A real index (the embedded MiniLM model) over three one-fact documents."""
    from tailor.rag.index import build_index

    root = tmp_path_factory.mktemp("rag")
    for name, text in DOCS.items():
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / name).write_text(text)
    build_index([root / "docs"], root / "index", progress=False)
    return root / "index"


def test_with_an_index_a_retrieval_condition_runs_and_its_rows_carry_sources(tiny_model_dir, small_index, tmp_path):
    qa = _write_qa(tmp_path / "qa.jsonl", [{"question": "Where was the Zorblax-9 rover built?", "answer": "Quenmire"},
                                           {"question": "How many moons does Tovar have?", "answer": "two"}])
    results = _eval(tiny_model_dir, qa, tmp_path / "r.json", "--index", str(small_index), "--k", "2")
    plain, rag = results["conditions"]
    assert (plain["retrieval"], rag["retrieval"]) == (False, True)
    assert rag["name"] == plain["name"] + "+RAG"
    assert all("sources" not in r for r in plain["rows"])
    tops = [r["sources"][0]["source"] for r in rag["rows"]]
    assert [len(r["sources"]) for r in rag["rows"]] == [2, 2]
    assert tops[0].endswith("zorblax.md") and tops[1].endswith("tovar.md")
    # the retrieved documents are in the prompt: the reference is scored on a longer conversation
    # whose loss differs from the plain one
    assert all(a["ref_loss"] != b["ref_loss"] for a, b in zip(plain["rows"], rag["rows"]))


# -- an LLM judge served by tailor -------------------------------------------------------------


def test_a_judge_served_by_tailor_grades_every_answer(tiny_model_dir, qa_file, tmp_path, capsys):
    """The tiny judge talks nonsense: the point is the round trip and the parsing, so each verdict
    is yes, no, or None (neither), and the table grows a judge column."""
    from servekit import serving

    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    reg = Registry.load([str(tiny_model_dir)], ["judge"], dtype="float32", max_batch=2, max_len=512)
    with serving(create_app(reg)) as url:
        results = _eval(tiny_model_dir, qa_file, tmp_path / "j.json", "--judge-url", url + "/v1",
                        "--judge-model", "judge")
    rows = results["conditions"][0]["rows"]
    assert [r["judge"] in (True, False, None) for r in rows] == [True] * 3
    assert "judge" in results["conditions"][0]["summary"]
    assert "judge" in capsys.readouterr().out.splitlines()[0]


def test_an_unreachable_judge_is_a_clear_error(tiny_model_dir, qa_file, capsys):
    from servekit import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["eval", str(tiny_model_dir), str(qa_file), "--judge-url", url, "--judge-model", "x"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_retrieval_settings_are_checked_before_the_model_loads(tiny_model_dir, small_index, qa_file, capsys):
    assert main(["eval", str(tiny_model_dir), str(qa_file), "--index", str(small_index), "--k", "0"]) == 2
    assert "--k 0" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), str(qa_file), "--index", str(small_index), "--rag-style", "x"]) == 2
    assert "'x'" in capsys.readouterr().err
