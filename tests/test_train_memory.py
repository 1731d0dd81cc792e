"""Fit to memory: the estimate and the plan on hand-made shapes, `fit` with the GPU's memory faked
at the boundary, and an out-of-memory error mid-run ending with a checkpoint and the resume command."""

import dataclasses

import pytest
import torch
from trainkit import write_chat_jsonl

from tailor.errors import TailorError
from tailor.train import TrainConfig, checkpoint, memory, train
from tailor.train.objectives import sft
from tailor.train.memory import GIB, Run, Shape, estimate, plan
from tailor.train.setup import Precision

# Qwen2.5-0.5B-like: 494M parameters, 24 layers, hidden 896, intermediate 4864, vocab 151,936
QWEN05 = Shape(params=494_000_000, quantisable=358_000_000, lora_params=8_800_000, hidden=896,
               intermediate=4864, layers=24, vocab=151_936)
RUN = Run(method="lora", qlora=False, compute_bytes=2, rows=8, max_length=1024, grad_accum=1, checkpointing=False)


def test_estimate_grows_with_tokens_and_shrinks_with_checkpointing_and_4bit():
    base = estimate(QWEN05, RUN)
    assert estimate(QWEN05, dataclasses.replace(RUN, max_length=2048)) > base
    assert estimate(QWEN05, dataclasses.replace(RUN, rows=16)) > base
    assert estimate(QWEN05, dataclasses.replace(RUN, checkpointing=True)) < base / 3
    assert estimate(QWEN05, dataclasses.replace(RUN, qlora=True)) < base
    assert estimate(QWEN05, dataclasses.replace(RUN, method="full")) > base + QWEN05.params * 12
    # activations dominate at batch 8 x 1024: a T4 (15 GiB free) cannot hold them for this model
    assert 15 * GIB < base < 40 * GIB


def test_a_run_that_fits_is_left_alone():
    chosen = plan(QWEN05, RUN, 80 * GIB)
    assert chosen.run == RUN and not chosen.changed


def test_a_tight_budget_halves_the_micro_batch_first_keeping_the_global_batch():
    budget = estimate(QWEN05, dataclasses.replace(RUN, rows=4, grad_accum=2)) + 1
    chosen = plan(QWEN05, RUN, budget)
    assert (chosen.run.rows, chosen.run.grad_accum, chosen.run.checkpointing) == (4, 2, False)
    assert chosen.estimate <= budget < estimate(QWEN05, RUN)


def test_a_tighter_budget_turns_on_gradient_checkpointing_then_halves_further():
    chosen = plan(QWEN05, RUN, 4 * GIB)
    assert (chosen.run.rows, chosen.run.grad_accum, chosen.run.checkpointing) == (4, 2, True)
    assert chosen.run.rows * chosen.run.grad_accum == RUN.rows * RUN.grad_accum
    tiny = plan(QWEN05, RUN, estimate(QWEN05, dataclasses.replace(RUN, rows=1, grad_accum=8, checkpointing=True)))
    assert (tiny.run.rows, tiny.run.grad_accum, tiny.run.checkpointing) == (1, 8, True)


def test_odd_micro_batches_keep_the_global_batch():
    run = dataclasses.replace(RUN, rows=6, max_length=512)
    chosen = plan(QWEN05, run, estimate(QWEN05, dataclasses.replace(run, rows=1, grad_accum=6, checkpointing=True)))
    assert chosen.run.rows * chosen.run.grad_accum == 6


def test_nothing_fits_refuses_naming_qlora_and_max_length():
    with pytest.raises(TailorError) as err:
        plan(QWEN05, RUN, 1 * GIB)
    assert "--qlora" in str(err.value) and "--max-length" in str(err.value) and "1024" in str(err.value)


def _cuda_precision():
    return Precision(compute=torch.float16, master=torch.float32, device="cuda")


def test_fit_changes_the_config_and_says_so(tiny_model_dir, monkeypatch):
    cfg = TrainConfig(data="x", model=str(tiny_model_dir), batch_size=8, max_length=4096)
    shape = memory.shape_of(cfg)
    assert shape.layers == 2 and shape.lora_params > 0 and shape.quantisable < shape.params
    need = estimate(shape, Run(method="lora", qlora=False, compute_bytes=2, rows=1, max_length=4096, grad_accum=8,
                               checkpointing=True))
    monkeypatch.setattr(memory, "device_memory", lambda device: (int(need / memory.USABLE) + 1, 16 * GIB))
    said = []
    new = memory.fit(cfg, _cuda_precision(), said.append)
    assert (new.batch_size, new.grad_accum, new.gradient_checkpointing) == (1, 8, True)
    assert "batch_size 8 -> 1" in said[0] and "grad_accum 1 -> 8" in said[0] and "checkpointing" in said[0]


def test_fit_leaves_a_fitting_run_alone(tiny_model_dir, monkeypatch):
    cfg = TrainConfig(data="x", model=str(tiny_model_dir))
    monkeypatch.setattr(memory, "device_memory", lambda device: (16 * GIB, 16 * GIB))
    said = []
    assert memory.fit(cfg, _cuda_precision(), said.append) is cfg
    assert said[0].startswith("memory: about")
    mps = Precision(compute=torch.float32, master=torch.float32, device="mps")
    assert memory.fit(cfg, mps, said.append) is cfg and len(said) == 1  # not planned there


def test_a_cpu_run_is_planned_against_available_ram_or_its_budget(tiny_model_dir, monkeypatch):
    """On a CPU the budget is the RAM available (or --memory-budget-gb, whichever is less): a run
    that would not fit gets gradient checkpointing and a smaller micro-batch, as on a GPU."""
    asked = []
    monkeypatch.setattr(memory, "device_memory", lambda device: asked.append(device) or (16 * GIB, 32 * GIB))
    cpu = Precision(compute=torch.bfloat16, master=torch.float32, device="cpu")
    cfg = TrainConfig(data="x", model=str(tiny_model_dir), batch_size=8, max_length=4096)
    said = []
    assert memory.fit(cfg, cpu, said.append) is cfg and asked == ["cpu"]
    assert "of RAM available" in said[0]
    shape = memory.shape_of(cfg)
    need = estimate(shape, Run(method="lora", qlora=False, compute_bytes=2, rows=1, max_length=4096, grad_accum=8,
                               checkpointing=True))
    tight = TrainConfig(data="x", model=str(tiny_model_dir), batch_size=8, max_length=4096,
                        memory_budget_gb=need / GIB * 1.01)
    new = memory.fit(tight, cpu, said.append)
    assert (new.batch_size, new.grad_accum, new.gradient_checkpointing) == (1, 8, True)
    assert "budget" in said[-1] and "gradient checkpointing on" in said[-1]
    with pytest.raises(TailorError) as err:
        memory.fit(TrainConfig(data="x", model=str(tiny_model_dir), memory_budget_gb=0.0001), cpu, said.append)
    assert "GiB of RAM" in str(err.value)


def test_out_of_memory_mid_run_saves_a_checkpoint_and_names_the_resume(tmp_path, tiny_model_dir, monkeypatch):
    data = write_chat_jsonl(tmp_path / "train.jsonl", 20, seed=1)
    real, calls = sft.batch_loss, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # the first micro-batch of step 4 (one micro-batch per step)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(sft, "batch_loss", failing)
    cfg = TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run"), max_steps=6,
                      batch_size=5, val_split=0, eval_samples=0, save_every=100, eval_every=100, device="cpu")
    with pytest.raises(TailorError) as err:
        train(cfg, quiet=True)
    text = str(err.value)
    assert "out of memory" in text and f"tailor train --resume {tmp_path / 'run'}" in text
    assert "--gradient-checkpointing" in text
    assert checkpoint.read_meta(checkpoint.latest(tmp_path / "run"))["step"] == 3
