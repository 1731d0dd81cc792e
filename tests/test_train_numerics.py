"""Training numerics that must match the model the user trains: logit transforms (soft-capping,
scaling), new end-of-turn tokens on untied heads, where LoRA updates are accumulated, and the
fused-forward switch recorded in the config."""

import argparse
from types import SimpleNamespace

import pytest
import torch
import yaml
from trainkit import random_examples, write_chat_jsonl

from tailor.train import TrainConfig, fused, train
from tailor.train.batches import collate
from tailor.train.loss import batch_loss, decoder_parts, linear_cross_entropy

# ---- item 8: logit soft-capping and scaling -------------------------------------------------


def _logit_model(kind):
    """A tiny random model of a family that transforms its logits, with the transform made
    strong (large logits, small cap, large scale) so that skipping it shows."""
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    config, cls = {
        "gemma2": (lambda: tf.Gemma2Config(**common, final_logit_softcapping=2.0, query_pre_attn_scalar=8),
                   tf.Gemma2ForCausalLM),
        "granite": (lambda: tf.GraniteConfig(**common, logits_scaling=0.25), tf.GraniteForCausalLM),
        "cohere": (lambda: tf.CohereConfig(**common, logit_scale=4.0), tf.CohereForCausalLM),
    }[kind]
    torch.manual_seed(0)
    model = cls(config()).float().eval()  # eval: no dropout, so both forwards are deterministic
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)  # logits of a few units: the cap bites
    return model


def _hf_loss(model, batch):
    logits = model(input_ids=batch.input_ids, use_cache=False).logits
    picked = logits.reshape(-1, logits.shape[-1]).index_select(0, batch.target_index)
    return torch.nn.functional.cross_entropy(picked, batch.target_ids, reduction="sum")


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["gemma2", "granite", "cohere"])
def test_training_loss_applies_the_models_logit_transform(kind):
    """batch_loss on a batch with masked prompts equals the HF forward's own cross-entropy, and
    so do the gradients (fp32): Gemma-2 soft-capping, Granite and Cohere logit scaling."""
    model = _logit_model(kind)
    batch = collate(random_examples(5, 96, seed=1, lo=6, hi=20), list(range(5)), batching="group",
                    max_length=32, pad_id=0)
    want = _hf_loss(model, batch)
    want_grads = _grads(model, want)
    body, head = decoder_parts(model)
    got, hits = batch_loss(body, head, batch, torch.float32)
    got_grads = _grads(model, got)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) > 3
    for name, g in want_grads.items():  # fp32 sums of a different order: relative to the largest
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=2e-6 * float(g.abs().max()), msg=name)


@pytest.mark.parametrize("scale,cap", [(1.0, 1.5), (3.0, None), (0.5, 2.0)])
def test_chunked_cross_entropy_with_transform_matches_autograd(monkeypatch, scale, cap):
    """The hand-written gradient through scale and tanh soft-capping, over several chunks."""
    import tailor.train.loss as loss_mod
    from tailor.logits import LogitTransform

    monkeypatch.setattr(loss_mod, "_CHUNK_ELEMENTS", 7 * 50)
    torch.manual_seed(0)
    h, w = torch.randn(30, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    b, t = torch.randn(50, requires_grad=True), torch.randint(0, 50, (30,))
    transform = LogitTransform(scale=scale, softcap=cap)
    total, correct = linear_cross_entropy(h, w, t, b, transform=transform)
    grads = torch.autograd.grad(total, (h, w, b))
    z = (h @ w.T + b) * scale
    logits = z if cap is None else cap * torch.tanh(z / cap)
    ref = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    assert int(correct) == int((logits.argmax(-1) == t).sum())
    for g, r in zip(grads, torch.autograd.grad(ref, (h, w, b))):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gemma2", "granite", "cohere"])
def test_engine_serves_transformed_logits_through_hf(kind):
    """The fast engine forward does not apply logit transforms: it must refuse these models, so
    the HF fallback (whose logits include the transform) serves them."""
    from tailor.infer.llama import supports

    config = _logit_model(kind).config
    assert not supports(config)
    llama_like = SimpleNamespace(**{**config.to_dict(), "model_type": "llama", "hidden_act": "silu"})
    assert not supports(llama_like), "a transform in a Llama-family config also sends it to HF"


# ---- item 10: every LoRA update accumulated in fp32 -----------------------------------------


def _biased_lora_model(tmp_path, target):
    """A bf16 LoRA model whose `target` projection outputs exactly its (bf16) bias, all of
    magnitude >= 0.5, so a LoRA update below 1e-3 is under half a bf16 step of every element."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tailor.train import lora

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    base = LlamaForCausalLM(cfg).to(torch.bfloat16)
    proj = dict(base.named_modules())[f"model.layers.0.{'self_attn' if target[0] in 'qkvo' else 'mlp'}.{target}"]
    with torch.no_grad():
        proj.weight.zero_()
        sign = torch.randint(0, 2, proj.bias.shape).float() * 2 - 1
        proj.bias.copy_(sign * (0.5 + 0.25 * torch.rand(proj.bias.shape)))
    lcfg = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_targets=target, dora=False, rslora=False)
    model = lora.wrap(base, lcfg, base_ref=str(tmp_path))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.eval()


@pytest.mark.parametrize("target", ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
def test_tiny_lora_update_is_not_rounded_away_in_bf16(tmp_path, target):
    """Precision policy of the fused forward: a LoRA update is added in fp32, so even one under
    half a bf16 step of its base output changes the result, for every projection."""
    model = _biased_lora_model(tmp_path, target)
    body, _ = decoder_parts(model)
    assert isinstance(body, fused.FusedBody)
    ids = torch.randint(0, 64, (4, 24))
    lora_b = next(m for n, m in model.named_modules() if n.endswith("lora_B.default"))
    updates = []
    lora_b.register_forward_hook(lambda m, args, out: updates.append(out.detach().abs().max() * 2))  # scale 2

    def out(body):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return body(input_ids=ids).last_hidden_state.float()

    zero = out(body)
    with torch.no_grad():
        lora_b.weight.copy_(torch.randn_like(lora_b.weight) * 1e-5)
    out(decoder_parts(model, fused=False)[0])  # the HF body calls lora_B: measure the update
    assert 0 < float(updates[-1]) < 5e-4, "the update is under half a bf16 step (>= 2**-9) of every element"
    assert not torch.equal(out(body), zero), f"the {target} LoRA update was rounded away"


# ---- item 12: the fused switch is a recorded config field ---------------------------------


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_chat_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 12)


def _cfg(tiny_model_dir, data_file, out, **kw):
    # one held-out example: the final evaluation runs its forward too
    return TrainConfig(**{**dict(data=str(data_file), model=str(tiny_model_dir), out=str(out), max_steps=1,
                                 batch_size=4, dtype="float32", eval_samples=0), **kw})


@pytest.fixture
def fused_calls(monkeypatch):
    """How often the fused body ran a forward."""
    calls = []
    real = fused.FusedBody.forward
    monkeypatch.setattr(fused.FusedBody, "forward", lambda self, *a: calls.append(1) or real(self, *a))
    return calls


def test_fused_config_field_round_trips_and_flags():
    from tailor import config
    from tailor.train.config import resolve, to_dict

    assert TrainConfig().fused is True
    off = resolve(TrainConfig(data="x.jsonl", fused=False))
    assert config.build(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(off)))).fused is False
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, TrainConfig)
    assert vars(parser.parse_args(["--no-fused"]))["fused"] is False


@pytest.mark.parametrize("how", ["field", "env"])
def test_run_without_fused_body_is_recorded_and_resumed(tiny_model_dir, data_file, tmp_path, monkeypatch,
                                                       fused_calls, how):
    from tailor.train import resume_config

    if how == "env":
        monkeypatch.setenv("TAILOR_FUSED", "0")
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, data_file, out, fused=how != "field"), quiet=True)
    assert fused_calls == [], "the run (training or evaluation) used the fused body"
    assert yaml.safe_load((out / "config.yaml").read_text())["fused"] is False
    monkeypatch.delenv("TAILOR_FUSED", raising=False)
    assert resume_config(out).fused is False, "the checkpoint keeps the switch for --resume"


def test_env_override_is_said(tiny_model_dir, data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAILOR_FUSED", "0")
    train(_cfg(tiny_model_dir, data_file, tmp_path / "run"), quiet=False)
    assert "TAILOR_FUSED=0" in capsys.readouterr().err


def test_run_uses_fused_body_by_default(tiny_model_dir, data_file, tmp_path, fused_calls):
    train(_cfg(tiny_model_dir, data_file, tmp_path / "run"), quiet=True)
    assert fused_calls, "the fused body ran"


# ---- item 9: new end-of-turn tokens on an untied head ---------------------------------------


@pytest.fixture(scope="module")
def untied_base(tmp_path_factory):
    """A base model (no chat template, no chatml tokens) whose lm_head is not tied."""
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("untied") / "model", chat_template=None, chatml=False, tie=False)


def test_new_end_of_turn_token_is_trained_on_untied_head(untied_base, tmp_path):
    """The chatml fallback adds <|im_end|>; LoRA must train its lm_head row too (the head is not
    the embedding), so the fine-tune learns to stop, also after saving and loading the adapter."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tailor import models
    from tailor.infer.loading import load_engine

    data = write_chat_jsonl(tmp_path / "train.jsonl", 24, seed=2)
    result = train(TrainConfig(data=str(data), model=str(untied_base), out=str(tmp_path / "run"), max_steps=30,
                               batch_size=8, lr=3e-2, dtype="float32", eval_samples=0, val_split=0.0), quiet=True)
    tok = models.load_tokenizer(str(result.final))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    base = AutoModelForCausalLM.from_pretrained(str(untied_base))
    assert base.get_output_embeddings().weight is not base.get_input_embeddings().weight
    assert end >= base.config.vocab_size, "the chatml fallback added <|im_end|> as a new token"

    loaded = load_engine(str(result.final), dtype="float32", device="cpu")
    assert end in loaded.stop_ids
    conv = json.loads(data.read_text().splitlines()[0])["messages"]
    prompt = tok.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    reply, reason = _greedy(loaded, prompt, 40)
    assert reason == "stop", f"greedy generation never emits <|im_end|>: {tok.decode(reply)!r}"

    base.resize_token_embeddings(len(tok))
    initial = base.get_output_embeddings().weight[end].detach().clone()
    trained = PeftModel.from_pretrained(base, str(result.final)).merge_and_unload()
    assert (trained.get_output_embeddings().weight[end] - initial).abs().max() > 1e-2, "lm_head row trained"


def _greedy(loaded, prompt, max_tokens):
    """(generated ids, finish reason) of a greedy reply through tailor's engine."""
    from tailor.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, stop_token_ids=loaded.stop_ids)
    tokens, reason = [], None
    for event in loaded.engine.generate(prompt, params, loaded.adapter):
        if event.token is not None:
            tokens.append(event.token)
        reason = event.finish_reason or reason
    return tokens, reason


def test_a_logit_transform_the_loss_does_not_know_is_refused():
    """A head whose logits the chunked loss cannot reproduce is refused, not trained silently."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tailor.errors import TailorError

    class Tripled(LlamaForCausalLM):  # a family with a convention tailor.logits does not know
        def forward(self, *args, **kw):
            out = super().forward(*args, **kw)
            out.logits = out.logits * 3
            return out

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    model = Tripled(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    with pytest.raises(TailorError, match="does not reproduce"):
        decoder_parts(model)
    assert isinstance(decoder_parts(LlamaForCausalLM(cfg))[0], fused.FusedBody)
