"""lm-evaluation-harness scores a model served by `tailor serve` exactly as its own `hf` backend
scores the same weights: a multiple-choice task through `local-completions` (log-likelihoods from
echo + logprobs) and a generation task through `local-chat-completions` (greedy text), both on a
tiny model in fp32 and on local data."""

import json

import pytest

from infer_kit import save_lively
from servekit import serving

lm_eval = pytest.importorskip("lm_eval")

MC = [{"question": "What is the capital of France?", "choices": [" Paris", " Lyon", " the lazy dog"], "answer": 0},
      {"question": "The quick brown", "choices": [" fox", " dog jumps over", " cat"], "answer": 0},
      {"question": "Translate to French: thank you", "choices": [" merci", " bonjour", " s'il vous plait"],
       "answer": 0}]
GEN = [{"question": "Hello! How can I help you today?", "answer": "Hi"},
       {"question": "What is the capital of France?", "answer": "Paris"},
       {"question": "Ahoy matey, arr!", "answer": "arr"}]


def _task(name: str, path, cache, **kw) -> dict:
    """A task config for local data (lm-eval takes the dict in place of a YAML file)."""
    return {"task": name, "dataset_path": "json", "test_split": "test", "doc_to_text": "{{question}}",
            "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(cache)}, **kw}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    root = tmp_path_factory.mktemp("lmeval")
    model = save_lively(root / "model")
    for name, docs in (("mc", MC), ("gen", GEN)):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    tasks = {
        "mc": _task("tailor_mc", root / "mc.jsonl", root / "cache", output_type="multiple_choice",
                    doc_to_choice="{{choices}}", doc_to_target="{{answer}}", metric_list=[{"metric": "acc"}]),
        "gen": _task("tailor_gen", root / "gen.jsonl", root / "cache", output_type="generate_until",
                     doc_to_target="{{answer}}", metric_list=[{"metric": "exact_match"}],
                     generation_kwargs={"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False,
                                        "temperature": 0}),
    }
    reg = Registry.load([str(model), str(model)], ["tiny", "tiny-stops"], dtype="float32", max_batch=4, max_len=256)
    # Every token ends a reply on `tiny-stops`, so each scoring request's one generated token is a
    # stop token: the case that cut the continuation's last token from every score.
    reg.get("tiny-stops").stop_ids = list(range(len(reg.get("tiny-stops").tokenizer)))
    with serving(create_app(reg)) as url:
        yield model, tasks, url


def _run(tasks: list[dict], model: str, args: dict, **kw) -> dict[str, list]:
    from lm_eval.tasks import TaskManager

    # without the built-in tasks: indexing their ~26k YAML files takes half a minute
    out = lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_defaults=False), **kw)
    return {name: sorted(samples, key=lambda s: s["doc_id"]) for name, samples in out["samples"].items()}


def _hf(folder) -> dict:
    return {"pretrained": str(folder), "dtype": "float32", "device": "cpu"}


def test_multiple_choice_loglikelihoods_equal_the_hf_backend(setup):
    model, tasks, url = setup
    served = _run([tasks["mc"]], "local-completions",
                  {"model": "tiny-stops", "base_url": f"{url}/v1/completions", "tokenizer_backend": "huggingface",
                   "tokenizer": str(model)})["tailor_mc"]
    reference = _run([tasks["mc"]], "hf", _hf(model))["tailor_mc"]
    assert len(served) == len(MC)
    for ours, theirs in zip(served, reference):
        assert [greedy for _, greedy in ours["filtered_resps"]] == [greedy for _, greedy in theirs["filtered_resps"]]
        assert [ll for ll, _ in ours["filtered_resps"]] == pytest.approx(
            [ll for ll, _ in theirs["filtered_resps"]], abs=1e-4)


def test_greedy_chat_generations_equal_the_hf_backend(setup):
    model, tasks, url = setup
    served = _run([tasks["gen"]], "local-chat-completions",
                  {"model": "tiny", "base_url": f"{url}/v1/chat/completions"}, apply_chat_template=True)["tailor_gen"]
    reference = _run([tasks["gen"]], "hf", _hf(model), apply_chat_template=True)["tailor_gen"]
    answers = [s["filtered_resps"][0] for s in served]
    assert answers == [s["filtered_resps"][0] for s in reference]
    assert len(set(answers)) == len(GEN) and all(answers)  # real, differing text, not empty agreement
