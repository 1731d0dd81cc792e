"""Each grader kind on hand-computed cases (and the reference library where one exists),
validation that names the field, the safe formula evaluator, and the model graders through a
sampler with a fixed reply."""

import math

import pytest

from tailor import graders
from tailor.graders import formula, template
from tailor.graders.sampler import FixedSampler


def run(grader, sample="", item=None, ctx=None):
    return graders.run(graders.check(grader), sample, item, ctx)


def flags(result):
    return {k for k, v in result["metadata"]["errors"].items() if v is True}


# ---- string_check ------------------------------------------------------------------------------


@pytest.mark.parametrize("op, text, ref, want", [
    ("eq", "Paris", "Paris", 1), ("eq", "Paris", "paris", 0), ("ne", "Paris", "paris", 1), ("ne", "a", "a", 0),
    ("like", "The capital is Paris.", "Paris", 1), ("like", "The capital is paris.", "Paris", 0),
    ("ilike", "The capital is PARIS.", "paris", 1), ("ilike", "Lyon", "paris", 0),
])
def test_string_check_operations(op, text, ref, want):
    g = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": "{{item.answer}}",
         "operation": op}
    out = run(g, text, {"answer": ref})
    assert out["reward"] == want and not flags(out)
    # like/ilike are SQL's LIKE '%ref%' and ILIKE '%ref%': the same verdicts as SQLite's (case-insensitive) LIKE
    if op in ("ilike",) and ref.isascii():
        import sqlite3

        assert sqlite3.connect(":memory:").execute("SELECT ? LIKE ?", (text, f"%{ref}%")).fetchone()[0] == want


def test_a_missing_variable_is_an_error_in_the_response_not_an_exception():
    g = {"type": "string_check", "name": "s", "input": "{{ item.nope }}", "reference": "x", "operation": "eq"}
    out = run(g, "x", {"answer": 1})
    assert out["reward"] == 0 and flags(out) == {"invalid_variable_error"}
    assert "item.nope does not exist" in out["metadata"]["error_details"]


def test_templates_read_nested_json_and_dump_non_strings():
    scope = template.sample_scope('{"steps": [{"name": "add"}], "n": 3}', {"tags": ["a", "b"], "k": {"x": 1}})
    assert template.render("{{ sample.output_json.steps[0].name }}/{{sample.output_json.n}}", scope) == "add/3"
    assert template.render('{{ item.tags }} {{ item["k"].x }}', scope) == '["a", "b"] 1'
    with pytest.raises(template.TemplateError):
        template.render("{{ os.environ }}", scope)


# ---- text_similarity: hand-computed values ------------------------------------------------------

HYP, REF = "the cat sat on the mat", "the cat is on the mat"


@pytest.mark.parametrize("metric, want", [
    # unigram overlap 5 of 6 both ways
    ("rouge_1", 5 / 6),
    # bigrams: the-cat, on-the, the-mat shared of 5 each
    ("rouge_2", 3 / 5),
    # trigrams: only "on the mat" of 4
    ("rouge_3", 1 / 4),
    ("rouge_4", 0.0),
    # LCS "the cat on the mat" = 5 of 6
    ("rouge_l", 5 / 6),
    # p1..p4 = 5/6, 3/5, 1/4, (0 + 0.1 smoothing)/3, brevity penalty 1
    ("bleu", (5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** 0.25),
    # GLEU: matched n-grams 5+3+1+0 of 18 in each
    ("gleu", 9 / 18),
    # rapidfuzz ratio: 1 - Indel distance / total length = 1 - 3/43
    ("fuzzy_match", 1 - 3 / 43),
])
def test_similarity_metrics_on_a_known_pair(metric, want):
    g = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": REF,
         "evaluation_metric": metric}
    assert run(g, HYP)["reward"] == pytest.approx(want, abs=1e-9)


def test_similarity_metrics_agree_with_the_reference_libraries():
    from nltk.translate.meteor_score import meteor_score
    from rapidfuzz import fuzz
    from rouge_score import rouge_scorer

    from tailor.graders.text_similarity import _NoSynonyms, similarity

    assert similarity("fuzzy_match", HYP, REF) == fuzz.ratio(HYP, REF) / 100
    assert similarity("rouge_5", "a b c d e f", "a b c d e g") == pytest.approx(
        rouge_scorer.RougeScorer(["rouge5"]).score("a b c d e g", "a b c d e f")["rouge5"].fmeasure)
    want = meteor_score([REF.split()], HYP.split(), wordnet=_NoSynonyms())
    assert similarity("meteor", HYP, REF) == pytest.approx(want)
    # METEOR by hand: 5 matches, P = R = 5/6, Fmean = 10PR/(R+9P) = 5/6; chunks 2 ("the cat", "on the mat")
    # -> penalty 0.5 * (2/5)^3 = 0.032; score 5/6 * (1 - 0.032)
    assert want == pytest.approx(5 / 6 * (1 - 0.5 * (2 / 5) ** 3))
    assert similarity("bleu", REF, REF) == pytest.approx(1.0) and similarity("gleu", "", REF) == 0.0


def test_cosine_uses_the_embedder_it_is_given():
    import numpy as np

    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.6, 0.8])}
    ctx = graders.Context(embed=lambda texts: [vectors[t] for t in texts])
    g = {"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}", "reference": "b",
         "evaluation_metric": "cosine"}
    assert run(g, "a", ctx=ctx)["reward"] == pytest.approx(0.6)


# ---- model graders through a sampler -----------------------------------------------------------

SCORE = {"type": "score_model", "name": "judge", "model": "fixed", "range": [0, 10],
         "input": [{"role": "system", "content": "Score the answer 0-10."},
                   {"role": "user", "content": "Q: {{item.q}} A: {{sample.output_text}}"}]}


@pytest.mark.parametrize("reply, want, flag", [
    ('{"steps": [], "result": 7.5}', 7.5, None), ("8", 8.0, None), ("Score: 42", 10.0, None),  # clipped to range
    ("-3", 0.0, None), ("no idea", 0.0, "model_grader_parse_error"),
])
def test_score_model_reads_the_score_and_clips_it(reply, want, flag):
    out = run(SCORE, "Paris", {"q": "capital?"}, graders.Context(sampler=FixedSampler(reply)))
    assert out["reward"] == want and flags(out) == ({flag} if flag else set())
    assert out["metadata"]["sampled_model_name"] == "fixed" and out["metadata"]["token_usage"] > 0
    assert set(out["model_grader_token_usage_per_model"]["fixed"]) == {
        "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"}


def test_an_unknown_grader_model_is_a_server_error_in_the_response():
    out = run(dict(SCORE, model="gpt-9"), "x", {"q": "?"}, graders.Context(sampler=FixedSampler("1")))
    assert out["reward"] == 0 and flags(out) == {"model_grader_server_error"}
    assert "gpt-9" in out["metadata"]["errors"]["model_grader_server_error_details"]


@pytest.mark.parametrize("reply, label, reward", [
    ('{"result": "correct"}', "correct", 1.0), ("Incorrect.", "incorrect", 0.0),
    ("I think it is correct because...", "correct", 1.0), ("unsure", None, 0.0)])
def test_label_model_passes_on_a_passing_label(reply, label, reward):
    g = {"type": "label_model", "name": "l", "model": "fixed", "labels": ["correct", "incorrect"],
         "passing_labels": ["correct"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    out = run(g, "Paris", {}, graders.Context(sampler=FixedSampler(reply)))
    assert out["reward"] == reward and out["metadata"]["scores"].get("label") == label


# ---- multi and its formula ---------------------------------------------------------------------

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
         "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
         "evaluation_metric": "fuzzy_match"}


F = 8 / 9  # ratio("abcd", "abcde"): 1 - 1 edit / 9 characters


@pytest.mark.parametrize("expr, want", [
    ("0.5 * exact + 0.5 * fuzzy", 0.5 * F), ("max(exact, fuzzy) ^ 2", F ** 2), ("fuzzy ** 2", F ** 2),
    ("sqrt(fuzzy) + floor(2.7) - ceil(0.2) + abs(-1) + log(exp(1)) + min(1, 2, 0.5)", math.sqrt(F) + 2 - 1 + 1 + 1 + 0.5),
    ("-exact + (fuzzy / 2)", F / 2)])
def test_multi_combines_sub_rewards_with_the_formula(expr, want):
    g = {"type": "multi", "name": "m", "graders": {"exact": EXACT, "fuzzy": FUZZY}, "calculate_output": expr}
    out = run(g, "abcd", {"a": "abcde"})
    assert out["sub_rewards"] == {"exact": 0.0, "fuzzy": pytest.approx(F)}
    assert out["reward"] == pytest.approx(want) and not flags(out)


@pytest.mark.parametrize("expr, words", [
    ("__import__('os').system('x')", "only the functions"), ("exact.__class__", "attribute is not allowed"),
    ("open('/etc/passwd')", "only the functions"), ("exact if fuzzy else 1", "ifexp is not allowed"),
    ("nope + 1", "unknown name 'nope'"), ("[exact]", "list is not allowed"), ("'a' * 9", "is not a number"),
    ("exact +", "cannot parse"), ("exact < fuzzy", "compare is not allowed"),
])
def test_the_formula_evaluator_refuses_everything_but_arithmetic(expr, words):
    with pytest.raises(formula.FormulaError, match=words):
        formula.parse(expr, {"exact", "fuzzy"})


def test_a_formula_that_cannot_be_computed_sets_formula_parse_error():
    g = {"type": "multi", "name": "m", "graders": {"exact": EXACT}, "calculate_output": "1 / exact"}
    out = run(g, "x", {"a": "y"})
    assert out["reward"] == 0 and flags(out) == {"formula_parse_error"}
    assert formula.evaluate(formula.parse("2 ^ 10", set()), {}) == 1024
    with pytest.raises(formula.FormulaError):
        formula.evaluate(formula.parse("2 ^ 2000", set()), {})  # no huge powers
    with pytest.raises(formula.FormulaError):
        formula.evaluate(formula.parse("10.0 ^ 400", set()), {})


# ---- validation names the field ----------------------------------------------------------------


@pytest.mark.parametrize("grader, param", [
    ({"type": "string_check", "name": "s", "input": "x", "reference": "y", "operation": "neq"}, "grader.operation"),
    ({"type": "string_check", "name": "s", "input": "{{ x.y }}", "reference": "y", "operation": "eq"}, "grader.input"),
    ({"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "rouge_9"},
     "grader.evaluation_metric"),
    ({"type": "score_model", "name": "j", "model": "m", "input": [], "range": [0, 1]}, "grader.input"),
    ({"type": "score_model", "name": "j", "model": "m", "input": [{"role": "user", "content": "x"}], "range": [1, 0]},
     "grader.range"),
    ({"type": "score_model", "name": "j", "model": "m", "input": [{"role": "user", "content": "x"}],
      "sampling_params": {"temperature": 5}}, "grader.sampling_params.temperature"),
    ({"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": "x"}],
      "labels": ["a"], "passing_labels": ["b"]}, "grader.passing_labels"),
    ({"type": "python", "name": "p", "source": "def grade(:"}, "grader.source"),
    ({"type": "python", "name": "p", "source": "x = 1"}, "grader.source"),
    ({"type": "multi", "name": "m", "graders": {"a": {"type": "multi"}}, "calculate_output": "a"},
     "grader.graders.a.type"),
    ({"type": "multi", "name": "m", "graders": {"a": dict(EXACT, operation="??")}, "calculate_output": "a"},
     "grader.graders.a.operation"),
    ({"type": "multi", "name": "m", "graders": {"a": EXACT}, "calculate_output": "b"}, "grader.calculate_output"),
    ({"type": "wizard"}, "grader.type"),
])
def test_validation_errors_name_the_field_path(grader, param):
    with pytest.raises(graders.Invalid) as err:
        graders.check(grader)
    assert err.value.param == param


def test_multi_accepts_a_list_or_one_grader_keyed_by_name():
    one = graders.check({"type": "multi", "name": "m", "graders": EXACT, "calculate_output": "exact"})
    many = graders.check({"type": "multi", "name": "m", "graders": [EXACT, FUZZY], "calculate_output": "exact+fuzzy"})
    assert list(one["graders"]) == ["exact"] and list(many["graders"]) == ["exact", "fuzzy"]


def test_run_many_grades_every_pair_in_order():
    g = graders.check(EXACT)
    out = graders.run_many(g, [("a", {"a": "a"}), ("b", {"a": "c"}), ("c", {"a": "c"})])
    assert [r["reward"] for r in out] == [1.0, 0.0, 1.0]
