"""fp16 mixed precision with dynamic loss scaling: the dtype choice (GPU properties faked), the
scaler's step/skip logic on a small module, the loop's skipped-step records, and the scaler state
through a checkpoint (exact resume)."""

import json

import pytest
import torch
from trainkit import write_chat_jsonl

from tailor import models
from tailor.train import TrainConfig, checkpoint, distributed, resume_config, setup, train
from tailor.train.setup import Precision, precision


def _fake_cuda(monkeypatch, bf16: bool):
    monkeypatch.setattr(models, "pick_device", lambda name=None: "cuda")
    monkeypatch.setattr(distributed, "local_device", lambda device: device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")  # this CPU torch has no CUDA
def test_auto_on_a_cuda_gpu_without_bf16_trains_fp16_with_loss_scaling(monkeypatch):
    _fake_cuda(monkeypatch, bf16=False)
    prec = precision(TrainConfig(data="x", dtype="auto"))
    assert prec.compute == torch.float16 and prec.master == torch.float32
    assert isinstance(prec.scaler, torch.amp.GradScaler)
    assert any("loss scaling" in n for n in prec.notes)
    assert not any("not supported" in n for n in prec.notes)


def test_auto_on_a_bf16_gpu_has_no_scaler(monkeypatch):
    _fake_cuda(monkeypatch, bf16=True)
    prec = precision(TrainConfig(data="x", dtype="auto"))
    assert prec.compute == torch.bfloat16 and prec.scaler is None and prec.notes == []


@pytest.mark.parametrize("dtype,compute", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_bf16_and_fp32_keep_no_scaler(dtype, compute):
    prec = precision(TrainConfig(data="x", dtype=dtype, device="cpu"))
    assert prec.compute == compute and prec.scaler is None


def test_auto_on_cpu_never_picks_fp16():
    prec = precision(TrainConfig(data="x", dtype="auto", device="cpu"))
    assert prec.compute in (torch.bfloat16, torch.float32) and prec.scaler is None


def test_fp16_on_cpu_only_when_asked_and_says_it_is_slow():
    prec = precision(TrainConfig(data="x", dtype="float16", device="cpu"))
    assert prec.compute == torch.float16 and isinstance(prec.scaler, torch.amp.GradScaler)
    assert any("slow" in n for n in prec.notes)


def _module_and_opt():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


def test_scaled_step_matches_the_unscaled_one():
    """Scaling the loss, unscaling before clipping: the same clipped update and grad norm as fp32."""
    x = torch.randn(5, 4)
    ref, ref_opt = _module_and_opt()
    plain = Precision(compute=torch.float32, master=torch.float32, device="cpu")
    plain.backward(ref(x).pow(2).sum())
    ref_norm, ref_skipped = plain.step(ref_opt, list(ref.parameters()), 0.5)
    m, opt = _module_and_opt()
    fp16 = Precision(compute=torch.float16, master=torch.float32, device="cpu", scaler=setup.make_scaler("cpu"))
    fp16.backward(m(x).pow(2).sum())
    assert m.weight.grad.abs().max() > 1000  # the gradient really was scaled
    norm, skipped = fp16.step(opt, list(m.parameters()), 0.5)
    assert not skipped and not ref_skipped
    assert float(norm) == pytest.approx(float(ref_norm), rel=1e-5)
    torch.testing.assert_close(m.weight, ref.weight)


def test_inf_gradient_skips_the_step_and_lowers_the_scale():
    m, opt = _module_and_opt()
    before = m.weight.detach().clone()
    prec = Precision(compute=torch.float16, master=torch.float32, device="cpu", scaler=setup.make_scaler("cpu"))
    scale = prec.scaler.get_scale()
    prec.backward(m(torch.randn(2, 4)).sum())
    m.weight.grad[0, 0] = float("inf")
    norm, skipped = prec.step(opt, list(m.parameters()), 1.0)
    assert skipped and float(norm) == 0.0
    assert torch.equal(m.weight, before)
    assert prec.scaler.get_scale() == scale / 2


def test_scaler_state_round_trips_through_a_checkpoint(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = setup.make_scaler("cpu")
    scaler.scale(torch.ones(()))  # the scale tensor is made on first use
    scaler.update(new_scale=1234.0)
    ckpt = checkpoint.save(tmp_path, model=model, tokenizer=tok, optimizer=opt, scheduler=sched,
                           meta={"step": 3}, keep=1, scaler=scaler)
    fresh = setup.make_scaler("cpu")
    checkpoint.load_state(ckpt, opt, sched, scaler=fresh)
    assert fresh.get_scale() == 1234.0
    assert fresh.state_dict() == scaler.state_dict()


def _cfg(tiny_model_dir, data, out, **kw):
    base = dict(data=str(data), model=str(tiny_model_dir), out=str(out), max_steps=4, batch_size=5, lr=1e-2,
                save_every=2, eval_every=100, eval_samples=0, dtype="float16", device="cpu", val_split=0)
    return TrainConfig(**{**base, **kw})


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_overflowing_steps_are_skipped_logged_and_counted(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(setup, "INIT_SCALE", 2.0 ** 60)  # far too high: the first steps overflow in fp16
    data = write_chat_jsonl(tmp_path / "train.jsonl", 20, seed=1)
    train(_cfg(tiny_model_dir, data, tmp_path / "run"))
    recs = _records(tmp_path / "run")
    assert recs[0]["skipped"] is True and recs[0]["grad_norm"] == 0.0  # strict JSON: no NaN/Infinity
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    assert [r["skipped_steps"] for r in recs] == [sum(q["skipped"] for q in recs[:i + 1]) for i in range(len(recs))]
    assert "skipped" in capsys.readouterr().err


def test_fp16_run_resumes_exactly_with_its_scaler(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(setup, "INIT_SCALE", 2.0 ** 21)  # some steps skip, so the scale moves during the run
    data = write_chat_jsonl(tmp_path / "train.jsonl", 20, seed=2)
    flat = dict(schedule="constant", warmup=0)  # a run extended on resume equals a longer one from the start
    whole = train(_cfg(tiny_model_dir, data, tmp_path / "whole", **flat), quiet=True)
    half = train(_cfg(tiny_model_dir, data, tmp_path / "half", max_steps=2, **flat), quiet=True)
    assert half.step == 2
    resumed = train(resume_config(tmp_path / "half", max_steps=4), quiet=True)
    assert resumed.losses == whole.losses
    skips = [r["skipped"] for r in _records(tmp_path / "whole")]
    assert any(skips) and not all(skips), skips  # the scale moved, and training went on
    assert _records(tmp_path / "half") == [{**r, "tokens_per_s": s["tokens_per_s"]}
                                           for r, s in zip(_records(tmp_path / "whole"), _records(tmp_path / "half"))]
    state = torch.load(tmp_path / "half" / "checkpoint-000002" / "state.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0


def test_fp16_trains_to_the_fp32_loss(tmp_path, tiny_model_dir):
    data = write_chat_jsonl(tmp_path / "train.jsonl", 20, seed=4)
    fp16 = train(_cfg(tiny_model_dir, data, tmp_path / "fp16"), quiet=True)
    fp32 = train(_cfg(tiny_model_dir, data, tmp_path / "fp32", dtype="float32"), quiet=True)
    assert fp16.losses == pytest.approx(fp32.losses, abs=0.01)
    assert not any(r["skipped"] for r in _records(tmp_path / "fp16"))
