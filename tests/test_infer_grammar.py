"""Constrained decoding and honest sampling in the engine: schema checks and limits, the compiled
grammar cache, masks in a mixed batch, logit_bias and OpenAI's penalties."""

import json

import pytest
import torch

from infer_kit import save_lively

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "happy": {"type": "boolean"}, "kind": {"enum": ["cat", "dog"]}},
    "required": ["name", "age", "happy", "kind"], "additionalProperties": False}
PROMPT = [5, 6, 7, 8, 9, 10]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tailor.infer.loading import load_engine

    return load_engine(str(save_lively(tmp_path_factory.mktemp("grammar") / "m")), dtype="float32", max_batch=8)


def _grammar(loaded, schema=PERSON, strict=True):
    from tailor.infer.loading import embedding_rows
    from tailor.infer.schema import compile_schema

    return compile_schema(schema, strict=strict, tokenizer=loaded.tokenizer, stop_ids=loaded.stop_ids,
                          width=embedding_rows(loaded.engine.backend))


def _params(loaded, n=60, **kw):
    from tailor.infer.sampling import SamplingParams

    kw.setdefault("temperature", 0)
    return SamplingParams(max_new_tokens=n, stop_token_ids=loaded.stop_ids, **kw)


def _run(engine, reqs):
    for r in reqs:
        engine.submit(r)
    while engine.step():
        pass
    return reqs


def _text(loaded, req):
    return loaded.tokenizer.decode(req.tokens, skip_special_tokens=True)


# -- schema checks ---------------------------------------------------------------------------------


def _nested(depth):
    s = {"type": "string"}
    for _ in range(depth):
        s = {"type": "object", "properties": {"a": s}, "required": ["a"], "additionalProperties": False}
    return s


@pytest.mark.parametrize("schema, strict, words", [
    ({"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}, "required": ["a"],
      "additionalProperties": False}, True, ["`not`", "properties.a"]),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}, True,
     ["required", "a"]),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, True, ["additionalProperties"]),
    ({"anyOf": [{"type": "object"}]}, True, ["root"]),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "ssn"}}, "required": ["a"],
      "additionalProperties": False}, True, ["`format`", "ssn"]),
    (_nested(12), False, ["10 levels"]),
    ({"enum": [f"v{i}" for i in range(1001)]}, False, ["1000 enum values"]),
    ({"enum": [f"{i:0>60}" for i in range(300)]}, False, ["15000"]),
    ({"$ref": "https://example.com/schema.json"}, False, ["`$ref`", "inside the schema"]),
    ({"type": "object", "properties": {"a": {"$ref": "/etc/passwd#"}}}, False, ["`$ref`", "properties.a"]),
])
def test_schema_problems_name_the_keyword(schema, strict, words):
    from tailor.infer.grammar import GrammarError
    from tailor.infer.schema import check

    with pytest.raises(GrammarError) as err:
        check(schema, strict=strict)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_pydantic_strict_schemas_pass():
    from typing import Literal

    from openai.lib._pydantic import to_strict_json_schema
    from pydantic import BaseModel, Field

    from tailor.infer.schema import check

    class Pet(BaseModel):
        kind: Literal["cat", "dog"]
        age: int = Field(ge=0, le=30, description="in years")

    class Owner(BaseModel):
        name: str = Field(max_length=8)
        pets: list[Pet] = Field(max_length=2)
        best: Pet | None

    check(to_strict_json_schema(Owner), strict=True)
    check(_nested(10), strict=True)


def test_unenforceable_schemas_are_refused_at_compile(loaded):
    from tailor.infer.grammar import GrammarError

    with pytest.raises(GrammarError, match="admits no value"):
        _grammar(loaded, {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, strict=False)
    with pytest.raises(GrammarError, match="not"):  # llguidance names what it does not implement
        _grammar(loaded, {"type": "object", "not": {"type": "string"}}, strict=False)


def test_a_slow_compile_is_refused_without_waiting_for_it(loaded, monkeypatch):
    import time

    from tailor.infer import grammar
    from tailor.infer.grammar import GrammarError

    build = grammar._build
    monkeypatch.setattr(grammar, "_build", lambda *a: time.sleep(1) or build(*a))
    monkeypatch.setattr(grammar, "COMPILE_SECONDS", 0.05)
    start = time.perf_counter()
    with pytest.raises(GrammarError, match="longer than 0.05 s"):
        _grammar(loaded, {"enum": ["never compiled before"]}, strict=False)
    assert time.perf_counter() - start < 0.5


def test_compiled_grammars_are_cached_per_schema_and_tokenizer(loaded):
    first = _grammar(loaded)
    assert _grammar(loaded, json.loads(json.dumps(PERSON))) is first
    assert _grammar(loaded, {**PERSON, "description": "another"}) is not first


# -- decoding --------------------------------------------------------------------------------------


def test_a_grammar_makes_a_random_model_write_valid_json(loaded):
    import jsonschema

    from tailor.infer.engine import Request

    g = _grammar(loaded)
    plain, *constrained = _run(loaded.engine, [Request(PROMPT, _params(loaded))] + [
        Request(PROMPT, _params(loaded, temperature=1.0, seed=s, grammar=g)) for s in range(4)])
    with pytest.raises(ValueError):  # left alone, the random model writes no JSON
        json.loads(_text(loaded, plain))
    for req in constrained:
        assert req.finish_reason == "stop"
        jsonschema.validate(json.loads(_text(loaded, req)), PERSON)


def test_max_tokens_before_the_json_closes_ends_with_length(loaded):
    from tailor.infer.engine import Request

    (req,) = _run(loaded.engine, [Request(PROMPT, _params(loaded, n=4, grammar=_grammar(loaded)))])
    assert req.finish_reason == "length" and len(req.tokens) == 4


def test_mixed_batch_rows_equal_what_they_give_alone(loaded):
    from tailor.infer.engine import Request

    g = _grammar(loaded)
    json_alone = _run(loaded.engine, [Request(PROMPT, _params(loaded, 30, grammar=g))])[0].tokens
    kinds = [dict(), dict(grammar=g), dict(frequency_penalty=1.5, presence_penalty=0.5), dict(logit_bias={40: 5.0}),
             dict(grammar=g, logit_bias={json_alone[4]: -100})]
    alone = [_run(loaded.engine, [Request(PROMPT, _params(loaded, 30, **kw))])[0].tokens for kw in kinds]
    together = _run(loaded.engine, [Request(PROMPT, _params(loaded, 30, **kw)) for kw in kinds])
    assert [r.tokens for r in together] == alone
    assert len({tuple(t) for t in alone}) == len(kinds)  # each feature changed the reply


def test_logit_bias_bans_and_forces(loaded):
    from tailor.infer.engine import generate_ids

    free = list(generate_ids(loaded.engine, PROMPT, _params(loaded, 8)))
    banned = list(generate_ids(loaded.engine, PROMPT, _params(loaded, 8, logit_bias={free[0]: -100})))
    assert banned[0] != free[0] and free[0] not in banned
    forced = list(generate_ids(loaded.engine, PROMPT, _params(loaded, 8, logit_bias={123: 100})))
    assert forced == [123] * 8
    # log-probabilities stay the model's own: the forced token is reported as the model scored it
    (event, *_) = loaded.engine.generate(PROMPT, _params(loaded, 1, logit_bias={123: 100}, logprobs=True))
    raw = torch.log_softmax(loaded.engine.backend.prefill(0, PROMPT).float(), -1)[123]
    loaded.engine.backend.release(0)
    assert event.token == 123 and event.logprob == pytest.approx(float(raw), abs=1e-4)


def test_penalties_follow_openais_formula():
    from tailor.infer.sampling import SamplingParams
    from tailor.infer.shaping import Shaper, shape

    s = Shaper.of(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, logit_bias={1: 2.0, 2: -100}))
    for t in (3, 3, 4):
        s.accept(t, 6, "cpu")
    logits = torch.zeros(1, 6)
    shape(logits, [s])
    assert logits[0].tolist() == [0.0, 2.0, float("-inf"), -1.25, -0.75, 0.0]
    assert Shaper.of(SamplingParams()) is None  # nothing asked: no per-step work


def test_seeded_sampling_repeats_with_penalties_and_bias(loaded):
    from tailor.infer.engine import generate_ids

    kw = dict(temperature=1.0, seed=9, frequency_penalty=0.7, presence_penalty=0.3, logit_bias={50: 3.0, 60: -100})
    first = list(generate_ids(loaded.engine, PROMPT, _params(loaded, 20, **kw)))
    assert list(generate_ids(loaded.engine, PROMPT, _params(loaded, 20, **kw))) == first
    assert 60 not in first
