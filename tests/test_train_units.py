"""Training pieces on hand-made inputs: batching order, packing, the chunked loss, the schedule."""

import copy

import numpy as np
import pytest
import torch
from trainkit import random_examples

from tailor.train.batches import collate, pack_rows, plan_epoch, step_trained
from tailor.train.loss import batch_loss, decoder_parts, linear_cross_entropy
from tailor.train.schedule import lr_factor


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)


def _plan(lengths, **kw):
    args = dict(seed=3, batch_size=4, batch_tokens=None, grad_accum=1, batching="group", max_length=64)
    args.update(kw)
    return plan_epoch(np.asarray(lengths), 0, **args)


def test_plan_covers_every_example_once_and_is_seeded():
    lengths = np.random.default_rng(0).integers(5, 60, size=103)
    for batching in ("group", "pack"):
        for kw in ({}, {"batch_tokens": 128}, {"grad_accum": 3}):
            plan = _plan(lengths, batching=batching, **kw)
            seen = sorted(i for step in plan for micro in step for i in micro)
            assert seen == list(range(103))
            assert plan == _plan(lengths, batching=batching, **kw)
    assert _plan(lengths) != _plan(lengths, seed=4)
    assert plan_epoch(lengths, 1, seed=3, batch_size=4, batch_tokens=None, grad_accum=1, batching="group",
                      max_length=64) != _plan(lengths)


def test_steps_hold_the_same_examples_whatever_the_micro_batch_split():
    lengths = np.random.default_rng(1).integers(5, 60, size=64)
    one = _plan(lengths, batch_size=4, grad_accum=1)
    four = _plan(lengths, batch_size=1, grad_accum=4)
    assert [sorted(sum(s, [])) for s in one] == [sorted(sum(s, [])) for s in four]
    assert all(len(s) == 4 for s in four)


def test_group_batches_have_similar_lengths():
    lengths = np.random.default_rng(2).integers(5, 500, size=400)
    plan = _plan(lengths, batch_size=8)
    waste = sum(max(lengths[m]) * len(m) - sum(lengths[m]) for s in plan for m in s)
    random_waste = sum(max(lengths[i:i + 8]) * 8 - sum(lengths[i:i + 8]) for i in range(0, 400, 8))
    assert waste < random_waste / 4


def test_token_budget_is_respected():
    lengths = np.random.default_rng(3).integers(5, 60, size=80)
    for batching in ("group", "pack"):
        for step in _plan(lengths, batching=batching, batch_tokens=128):
            for micro in step:
                cost = max(lengths[micro]) * len(micro) if batching == "group" else sum(lengths[micro])
                assert cost <= 128 or len(micro) == 1


def test_pack_rows_fit_capacity():
    lengths = [30, 10, 25, 60, 5, 33, 64]
    rows = pack_rows(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert len(rows) < len(lengths)


def test_collate_targets_are_shifted_and_do_not_cross_examples():
    exs = random_examples(5, 100, seed=4)
    for batching in ("group", "pack"):
        b = collate(exs, list(range(5)), batching=batching, max_length=64, pad_id=0)
        assert b.tokens == sum(len(e.input_ids) for e in exs)
        assert b.trained == step_trained(exs, [[0, 1, 2, 3, 4]])
        flat_ids = b.input_ids.reshape(-1)
        # each target is the token right after its position, inside the same example
        assert torch.equal(flat_ids[b.target_index + 1], b.target_ids)
        if batching == "pack":
            pos = b.position_ids.reshape(-1)
            assert torch.all(pos[b.target_index + 1] == pos[b.target_index] + 1)


def _reference_loss(model, exs):
    """Plain HF forward per example, full logits, summed CE over trained tokens."""
    total, n = 0.0, 0
    for e in exs:
        logits = model(input_ids=torch.tensor(e.input_ids)[None]).logits[0, :-1]
        target = torch.tensor(e.labels[1:])
        total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        n += int((target != -100).sum())
    return total, n


@pytest.mark.parametrize("batching", ["group", "pack"])
def test_batch_loss_equals_examples_one_by_one(tiny, batching):
    """Packed (block-diagonal mask, restarted positions) or grouped, the loss and gradient are those
    of running each example alone (fp32, 1e-5)."""
    exs = random_examples(7, tiny.config.vocab_size, seed=5)
    body, head = decoder_parts(tiny)
    tiny.zero_grad()
    ref, n = _reference_loss(tiny, exs)
    ref.backward()
    ref_grads = [p.grad.clone() for p in tiny.parameters()]
    tiny.zero_grad()
    batch = collate(exs, list(range(7)), batching=batching, max_length=80, pad_id=0)
    if batching == "pack":
        assert batch.input_ids.shape[0] < 7, "examples were actually packed together"
    loss, _ = batch_loss(body, head, batch, torch.float32)
    loss.backward()
    assert abs(loss.item() - ref.item()) / n < 1e-5
    for p, g in zip(tiny.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_chunked_cross_entropy_matches_full_logits(monkeypatch):
    import tailor.train.loss as loss_mod

    monkeypatch.setattr(loss_mod, "_CHUNK_ELEMENTS", 7 * 50)  # 7 rows per chunk: several chunks
    torch.manual_seed(0)
    h = torch.randn(30, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (30,))
    total, correct = linear_cross_entropy(h, w, t, b)
    total.backward()
    grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    logits = h @ w.T + b
    ref = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
    ref.backward()
    assert abs(total.item() - ref.item()) < 1e-4
    assert int(correct) == int((logits.argmax(-1) == t).sum())
    for g, x in zip(grads, (h, w, b)):
        torch.testing.assert_close(g, x.grad, atol=1e-5, rtol=1e-4)


def test_schedule_shapes():
    total, warm = 100, 10
    cos = [lr_factor(s, total=total, warmup=warm, schedule="cosine") for s in range(total)]
    assert cos[0] < cos[5] < cos[9] <= 1.0
    assert cos[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[10:], cos[11:]))
    assert cos[-1] < 0.01
    lin = [lr_factor(s, total=total, warmup=0, schedule="linear", min_ratio=0.1) for s in range(total)]
    assert lin[0] == 1.0 and lin[-1] == pytest.approx(0.1 + 0.9 / 100, abs=1e-9)
    assert {lr_factor(s, total=total, warmup=0, schedule="constant") for s in range(total)} == {1.0}


def test_fused_adamw_takes_the_steps_the_plain_loop_takes():
    """The training optimizer is torch's fused AdamW where it applies; after several steps on the
    same gradients its weights equal the plain per-tensor loop's to fp32 rounding, decay groups
    included, and it is not used for what it cannot take."""
    from types import SimpleNamespace

    import torch

    from tailor.train.session import _optimizer, fusable

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
    plain_model, start = copy.deepcopy(model), copy.deepcopy(model)
    cfg = SimpleNamespace(lr=1e-2, weight_decay=0.1)
    fused = _optimizer(model, cfg)
    assert fused.defaults["fused"] is True and len(fused.param_groups) == 2
    plain = torch.optim.AdamW([{"params": [p for p in plain_model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for p in plain_model.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    for step in range(5):
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, fused), (plain_model, plain)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (model[0].weight - start[0].weight).abs().max() > 1e-3  # five steps moved the weights
    assert not fusable([torch.nn.Parameter(torch.zeros(2, dtype=torch.int32), requires_grad=False)])
    assert not fusable([])
