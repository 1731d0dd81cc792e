"""The one Llama-family layer (tailor.nn.llama): training's forward and the engine's agree, and
greedy answers for evaluation come from the engine yet equal HF's."""

from types import SimpleNamespace

import pytest
import torch

from infer_kit import save_lively

MESSAGES = [[{"role": "user", "content": "hello there, how are you"}],
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count: 1 2 3"}]]


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    return save_lively(tmp_path_factory.mktemp("nn") / "base")


def _load(folder, method="full", targets="all-linear", dora=False):
    from transformers import AutoModelForCausalLM

    from tailor.train import lora

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    if method == "lora":
        cfg = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_targets=targets, dora=dora, rslora=False)
        model = lora.wrap(model, cfg, base_ref=str(folder))
        torch.manual_seed(3)
        with torch.no_grad():  # B starts at zero: make the adapter change every answer
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj,up_proj"])
def test_engine_prefill_logits_equal_training_forward(lively, targets):
    """Same tiny fp32 model + LoRA adapter: every prompt position's logits from the engine's
    prefill (KV cache, adapter kept apart) equal the training forward's (fused LoRA, no cache)."""
    from tailor.train import fused
    from tailor.train.generate import engine_forward
    from tailor.train.loss import decoder_parts

    model = _load(lively, "lora", targets)
    body, head = decoder_parts(model)
    assert isinstance(body, fused.FusedBody)
    ids = [5, 9, 31, 200, 7, 7, 64, 300, 2, 18, 41, 99]
    with torch.no_grad():
        want = torch.nn.functional.linear(body(torch.tensor([ids])).last_hidden_state[0], head.weight)
    forward, adapter = engine_forward(model, 64)
    assert adapter == 1
    got = forward.prefill(0, ids, adapter, all_logits=True).rows(0, len(ids))
    base = forward.prefill(0, ids, 0, all_logits=True).rows(0, len(ids))
    assert (got - base).abs().max() > 0.1  # the adapter matters, so agreement means something
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _hf_greedy_text(model, tokenizer, messages, n):
    from tailor.data.templates import render_prompt, stop_token_ids

    ids = render_prompt(tokenizer, messages)
    stops = stop_token_ids(tokenizer, model.generation_config)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=stops,
                             pad_token_id=stops[0])
    new = out[0, len(ids):].tolist()
    new = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
    return tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("method,engine", [("full", True), ("lora", True), ("dora", False)])
def test_greedy_reply_equals_hf_greedy(lively, monkeypatch, method, engine):
    """greedy_reply (evaluation samples, the demo) answers through the engine's forward when it
    covers the model, HF's otherwise (DoRA), and equals HF's greedy answer either way."""
    from transformers import AutoTokenizer

    from tailor.train import generate

    model = _load(lively, "lora" if method != "full" else "full", dora=method == "dora")
    tokenizer = AutoTokenizer.from_pretrained(str(lively))
    used = []
    real = generate.engine_forward
    monkeypatch.setattr(generate, "engine_forward", lambda *a: used.append(real(*a)) or used[-1])
    for messages in MESSAGES:
        got = generate.greedy_reply(model, tokenizer, messages, max_new_tokens=24)
        assert got == _hf_greedy_text(model, tokenizer, messages, 24)
        assert len(got) > 10  # a real answer, not an immediate stop
    assert (used[-1] is not None) == engine


def test_eval_samples_use_the_compute_dtype(lively):
    """Under autocast (bf16 training) the engine's copy of the weights is bf16, as served."""
    from tailor.train.generate import engine_forward

    forward, _ = engine_forward(_load(lively, "lora"), 32, torch.bfloat16)
    assert forward.dtype == torch.bfloat16 and forward.layers[0].qkv.dtype == torch.bfloat16
    assert forward.layers[0].lora[1]["qkv"][0].dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["qwen2", "llama-gqa"])
def test_both_forwards_equal_hf_for_each_family(family):
    """Qwen2's q/k/v biases and grouped-query attention go through the one layer on both sides."""
    import transformers as tf

    from tailor.infer.llama import LlamaForward
    from tailor.train.loss import decoder_parts

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = (tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, use_sliding_window=False)) if family == "qwen2"
             else tf.LlamaForCausalLM(tf.LlamaConfig(**common))).float().eval()
    if family == "qwen2":
        with torch.no_grad():  # biases start at zero: make them count
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    ids = [3, 60, 17, 99, 5, 5, 127, 40]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
        body, head = decoder_parts(model)
        trained = torch.nn.functional.linear(body(torch.tensor([ids])).last_hidden_state[0], head.weight)
    served = LlamaForward(model, 32).prefill(0, ids, all_logits=True).rows(0, len(ids))
    torch.testing.assert_close(trained, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(served, want, rtol=1e-5, atol=1e-5)
