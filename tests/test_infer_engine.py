"""The engine on its own: token ids in, token ids out, checked against HF and PEFT."""

import pytest
import torch

from infer_kit import save_lively, save_lora

PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41], [100, 200, 300, 400, 17, 3, 9, 9, 9, 120, 7], [77]]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    base = save_lively(root / "base")
    return base, save_lora(base, root / "lora")


@pytest.fixture(scope="module")
def hf(dirs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(dirs[0]), dtype=torch.float32).eval()


def _engine(folder, **kw):
    from tailor.infer.loading import load_engine

    return load_engine(str(folder), dtype="float32", **kw)


def _greedy(n=20, **kw):
    from tailor.infer.sampling import SamplingParams

    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


def _hf_greedy(model, prompt, n=20):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _ids(engine, prompt, params, adapter=0):
    from tailor.infer.engine import generate_ids

    return list(generate_ids(engine, prompt, params, adapter))


@pytest.mark.parametrize("which", ["lively", "stock"])
def test_greedy_equals_hf_generate(which, dirs, hf, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    folder, model = (dirs[0], hf) if which == "lively" else (
        tiny_model_dir, AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval())
    engine = _engine(folder).engine
    assert type(engine.backend).__name__ == "LlamaForward"
    for prompt in PROMPTS:
        assert _ids(engine, prompt, _greedy()) == _hf_greedy(model, prompt)


def test_batched_greedy_equals_batch_one(dirs):
    from tailor.infer.engine import Request

    engine = _engine(dirs[0], max_batch=4).engine
    alone = [_ids(engine, p, _greedy(12 + i)) for i, p in enumerate(PROMPTS)]
    reqs = [engine.submit(Request(p, _greedy(12 + i))) for i, p in enumerate(PROMPTS)]
    # a late arrival joins the running batch
    engine.step()
    late = engine.submit(Request(PROMPTS[0], _greedy(12)))
    while engine.step():
        pass
    assert [r.tokens for r in reqs] == alone
    assert late.tokens == alone[0]
    assert all(r.finish_reason == "length" for r in reqs + [late])


def test_more_requests_than_slots_queue_up(dirs):
    from tailor.infer.engine import Request

    engine = _engine(dirs[0], max_batch=2).engine
    reqs = [engine.submit(Request(p, _greedy(5))) for p in PROMPTS]
    while engine.step():
        assert len(engine._active) <= 2
    assert all(len(r.tokens) == 5 for r in reqs)


def test_lora_matches_peft_and_mixes_in_one_batch(dirs, hf):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tailor.infer.engine import Request

    loaded = _engine(dirs[1], max_batch=4)
    assert loaded.adapter == 1  # kept separate from the base, not merged
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(dirs[0]), dtype=torch.float32), str(dirs[1])).eval()
    expected_lora = [_hf_greedy(peft_model, p, 10) for p in PROMPTS[:2]]
    expected_base = [_hf_greedy(hf, p, 10) for p in PROMPTS[:2]]
    assert expected_lora != expected_base
    engine = loaded.engine
    reqs = [engine.submit(Request(p, _greedy(10), adapter=a)) for p in PROMPTS[:2] for a in (0, 1)]
    while engine.step():
        pass
    assert [r.tokens for r in reqs] == [expected_base[0], expected_lora[0], expected_base[1], expected_lora[1]]


def test_seeded_sampling_repeats_and_seeds_differ(dirs):
    from tailor.infer.sampling import SamplingParams

    engine = _engine(dirs[0]).engine
    p = lambda seed: SamplingParams(max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=50, seed=seed)  # noqa: E731
    assert _ids(engine, PROMPTS[0], p(3)) == _ids(engine, PROMPTS[0], p(3))
    assert _ids(engine, PROMPTS[0], p(3)) != _ids(engine, PROMPTS[0], p(4))


def test_stop_token_is_reported_without_text_then_ends(dirs):
    engine = _engine(dirs[0]).engine
    free = _ids(engine, PROMPTS[0], _greedy())
    stop_at = free[5]
    cut = _ids(engine, PROMPTS[0], _greedy(stop_token_ids=[stop_at]))
    assert cut == free[: free.index(stop_at)]
    events = list(engine.generate(PROMPTS[0], _greedy(stop_token_ids=[stop_at], logprobs=True, top_logprobs=2)))
    *content, stop, end = events
    assert [e.token for e in content] == cut and not any(e.stop_token for e in content)
    # evaluators read the stop token's log-probability: it comes like any token, with no text
    assert (stop.token, stop.text, stop.stop_token, stop.finish_reason) == (stop_at, "", True, None)
    assert stop.logprob <= 0 and stop.top_logprobs[0][0] == stop_at
    assert end.finish_reason == "stop" and end.token is None


def test_max_new_tokens_zero_scores_the_prompt_only(dirs):
    from tailor.infer.engine import Request
    from tailor.infer.sampling import SamplingParams

    engine = _engine(dirs[0]).engine
    req = engine.submit(Request(PROMPTS[2], SamplingParams(max_new_tokens=0, prompt_logprobs=True, top_logprobs=1)))
    while engine.step():
        pass
    assert req.tokens == [] and req.finish_reason == "length"
    assert len(req.prompt_logprobs) == len(PROMPTS[2]) and req.prompt_logprobs[0] is None


def test_logprobs_match_hf_logits(dirs, hf):
    from tailor.infer.sampling import SamplingParams

    engine = _engine(dirs[0]).engine
    events = [e for e in engine.generate(PROMPTS[2], SamplingParams(max_new_tokens=1, temperature=0, logprobs=True,
                                                                        top_logprobs=3)) if e.token is not None]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([PROMPTS[2]])).logits[0, -1].float(), -1)
    top = ref.topk(3)
    assert events[0].token == int(top.indices[0])
    assert events[0].logprob == pytest.approx(float(top.values[0]), abs=1e-4)
    assert [t for t, _ in events[0].top_logprobs] == top.indices.tolist()


def test_cancel_frees_the_slot(dirs):
    engine = _engine(dirs[0], max_batch=1).engine
    stream = engine.generate(PROMPTS[0], _greedy(100))
    next(stream)
    stream.close()  # the caller stops listening
    assert engine.busy == 0 and engine._free == [0]
    assert len(_ids(engine, PROMPTS[1], _greedy(3))) == 3


def test_background_thread_serves_generate(dirs):
    engine = _engine(dirs[0]).engine
    inline = _ids(engine, PROMPTS[0], _greedy(8))
    engine.start()
    try:
        assert _ids(engine, PROMPTS[0], _greedy(8)) == inline
    finally:
        engine.stop()
    with pytest.raises(RuntimeError):
        _ids(engine, PROMPTS[0], _greedy(8))


def test_context_limit(dirs):
    engine = _engine(dirs[0], max_len=16).engine
    with pytest.raises(ValueError, match="context is 16"):
        _ids(engine, list(range(1, 17)), _greedy())
    events = list(engine.generate(list(range(1, 11)), _greedy(100)))
    assert sum(e.token is not None for e in events) == 6 and events[-1].finish_reason == "length"
