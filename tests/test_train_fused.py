"""The fused training forward (tailor.train.fused) against the Hugging Face body it replaces."""

from types import SimpleNamespace

import pytest
import torch
from trainkit import random_examples

from tailor.train import fused
from tailor.train.batches import collate
from tailor.train.loss import batch_loss, decoder_parts


def _model(tiny_model_dir, method, dtype=torch.float32, dropout=0.0, targets="all-linear", dora=False):
    from transformers import AutoModelForCausalLM

    from tailor.train import lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype)
    if method == "lora":
        cfg = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=dropout, lora_targets=targets,
                              dora=dora, rslora=False)
        model = lora.wrap(model, cfg, base_ref=str(tiny_model_dir))
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.data = p.data.float()
                if "lora_B" in name:  # B starts at zero; random B makes every LoRA gradient non-zero
                    torch.nn.init.normal_(p, std=0.05)
    model.train()
    return model


def _batch(vocab, n=6, seed=0, batching="group"):
    ex = random_examples(n, vocab, seed=seed, lo=8, hi=30)
    return collate(ex, list(range(n)), batching=batching, max_length=64, pad_id=2)


def _loss_and_grads(model, body, head, batch, autocast=None):
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        loss, hits = batch_loss(body, head, batch, autocast or torch.float32)
    (loss / batch.trained).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.item(), int(hits), grads


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fused_loss_and_gradients_equal_hf_in_fp32(tiny_model_dir, method):
    model = _model(tiny_model_dir, method)
    body, head = decoder_parts(model)
    hf_body, _ = decoder_parts(model, fused=False)
    assert isinstance(body, fused.FusedBody)
    batch = _batch(model.config.vocab_size)
    got = _loss_and_grads(model, body, head, batch)
    want = _loss_and_grads(model, hf_body, head, batch)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    assert got[1] == want[1]
    assert got[2].keys() == want[2].keys() and len(got[2]) > 0
    if method == "lora":
        assert any("lora_A" in n for n in got[2]) and any("lora_B" in n for n in got[2])
    for name, g in want[2].items():
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lora_dropout_draws_masks_and_is_off_in_eval(tiny_model_dir):
    model = _model(tiny_model_dir, "lora", dropout=0.5)
    body, head = decoder_parts(model)
    assert isinstance(body, fused.FusedBody)
    batch = _batch(model.config.vocab_size)
    a = _loss_and_grads(model, body, head, batch)[0]
    b = _loss_and_grads(model, body, head, batch)[0]
    assert a != b  # fresh dropout masks each pass
    model.eval()
    with torch.no_grad():
        x = batch_loss(body, head, batch, torch.float32)[0]
        hf = batch_loss(decoder_parts(model, fused=False)[0], head, batch, torch.float32)[0]
    assert float(x) == pytest.approx(float(hf), rel=1e-5)


def test_partial_lora_targets_match_hf(tiny_model_dir):
    model = _model(tiny_model_dir, "lora", targets="q_proj,v_proj,up_proj")
    body, head = decoder_parts(model)
    assert isinstance(body, fused.FusedBody)
    batch = _batch(model.config.vocab_size, seed=1)
    got = _loss_and_grads(model, body, head, batch)
    want = _loss_and_grads(model, decoder_parts(model, fused=False)[0], head, batch)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    for name, g in want[2].items():
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fallbacks(tiny_model_dir):
    dora = _model(tiny_model_dir, "lora", dora=True)
    assert not isinstance(decoder_parts(dora)[0], fused.FusedBody)
    assert not isinstance(decoder_parts(_model(tiny_model_dir, "full"), fused=False)[0], fused.FusedBody)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_packed_rows_equal_hf_block_diagonal_mask(tiny_model_dir, method):
    """Packed rows (position ids restarting per example) run in the fused body, each example
    attending to itself only: the loss and gradients of HF's block-diagonal mask, fp32."""
    model = _model(tiny_model_dir, method)
    body, head = decoder_parts(model)
    hf_body = decoder_parts(model, fused=False)[0]
    packed = collate(random_examples(7, model.config.vocab_size, seed=3, lo=8, hi=30), list(range(7)),
                     batching="pack", max_length=64, pad_id=2)
    assert packed.position_ids is not None and packed.input_ids.shape[0] < 7  # several examples per row
    got = _loss_and_grads(model, body, head, packed)
    want = _loss_and_grads(model, hf_body, head, packed)
    assert got[0] == pytest.approx(want[0], rel=1e-5) and got[1] == want[1]
    for name, g in want[2].items():
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-6, msg=name)


def _train(model, body, head, batches, steps, autocast, lr):
    """Loss on `batches` after `steps` AdamW steps, measured through the same forward and
    precision as training, as tailor's validation does (so rounding in that forward shows)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for i in range(steps):
        _loss_and_grads(model, body, head, batches[i % len(batches)], autocast)
        opt.step()
    model.eval()
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        total = sum(float(batch_loss(body, head, b, autocast or torch.float32)[0]) for b in batches)
    return total / sum(b.trained for b in batches)


def _run(tiny_model_dir, method, batches, steps, lr, use_fused, autocast):
    dtype = torch.bfloat16 if (method == "lora" and autocast) else torch.float32  # LoRA's base is bf16
    model = _model(tiny_model_dir, method, dtype=dtype)
    if method == "lora":  # restart LoRA from B = 0 as real training does
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.zeros_(p)
    body, head = decoder_parts(model, fused=use_fused)
    assert isinstance(body, fused.FusedBody) == use_fused
    return _train(model, body, head, batches, steps, autocast, lr)


@pytest.mark.parametrize("method,lr", [("lora", 2e-2), ("full", 2e-3)])
def test_bf16_fused_training_tracks_fp32_training(tiny_model_dir, method, lr):
    """Several optimizer steps with the fused bf16 forward end at the loss fp32 training reaches."""
    vocab = _model(tiny_model_dir, "full").config.vocab_size
    batches = [_batch(vocab, seed=s) for s in range(3)]
    start = _run(tiny_model_dir, method, batches, 0, lr, False, None)
    fp32 = _run(tiny_model_dir, method, batches, 8, lr, False, None)
    fused_bf16 = _run(tiny_model_dir, method, batches, 8, lr, True, torch.bfloat16)
    print(method, start, fp32, fused_bf16)
    assert fp32 < start - 0.1  # training moved the loss, so the comparison means something
    assert fused_bf16 == pytest.approx(fp32, abs=0.02)


def test_small_lora_updates_are_not_rounded_away(tiny_model_dir):
    """The bf16 trap: one small LoRA step must lower the bf16 loss as much as it lowers fp32's."""
    vocab = _model(tiny_model_dir, "full").config.vocab_size
    batches = [_batch(vocab, seed=s) for s in range(3)]
    drops = {}
    for name, use_fused, autocast in (("fp32", False, None), ("fused", True, torch.bfloat16)):
        before = _run(tiny_model_dir, "lora", batches, 0, 1e-4, use_fused, autocast)
        after = _run(tiny_model_dir, "lora", batches, 1, 1e-4, use_fused, autocast)
        drops[name] = before - after
    print(drops)
    assert drops["fp32"] > 0
    assert drops["fused"] == pytest.approx(drops["fp32"], rel=0.2)
