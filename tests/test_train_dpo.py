"""DPO on the one loop (tailor.train.objectives.dpo), on the tiny model: loss and gradients against
a direct computation and against TRL's DPOTrainer, the reference without a second copy (LoRA:
adapters off, which the fused forward must follow; full: cached before training), step 0,
a learnable preference, grad accumulation, exact resume after kill -9, and refusals."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from trainkit import write_chat_jsonl, write_preference_jsonl

from tailor.errors import TailorError, UsageError
from tailor.train import TrainConfig, resume_config, train

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))  # the dataset and reference caches


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_preference_jsonl(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", 40, seed=1)


def _cfg(tiny_model_dir, data, out, **kw):
    base = dict(data=str(data), model=str(tiny_model_dir), out=str(out), objective="dpo", dtype="float32",
                lora_dropout=0.0, batch_size=4, max_steps=4, lr=5e-3, eval_samples=0, sample_max_tokens=4)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out: Path, name="metrics.jsonl") -> list[dict]:
    return [json.loads(ln) for ln in (out / name).read_text().splitlines()]


# ---- the fused forward follows PEFT's disable_adapter() ---------------------------------------


def _lora_model(tiny_model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    from tailor.train import lora

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype)
    cfg = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_targets="all-linear", dora=False,
                          rslora=False)
    model = lora.wrap(model, cfg, base_ref=str(tiny_model_dir))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_fused_forward_follows_disable_adapter(tiny_model_dir):
    """Inside `disable_adapter()` the fused body is the base model (as PEFT's own layers are),
    and in bf16 exactly what adapters with a zero update give; outside, the adapters count."""
    from transformers import AutoModelForCausalLM

    from tailor.train import fused
    from tailor.train.loss import decoder_parts

    model = _lora_model(tiny_model_dir)
    body, _ = decoder_parts(model)
    assert isinstance(body, fused.FusedBody)
    ids = torch.randint(3, model.config.vocab_size, (3, 17))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base.model(input_ids=ids).last_hidden_state
        adapted = body(input_ids=ids).last_hidden_state
        with model.disable_adapter():
            off = body(input_ids=ids).last_hidden_state
            hf_off = decoder_parts(model, fused=False)[0](input_ids=ids).last_hidden_state
        again = body(input_ids=ids).last_hidden_state
    torch.testing.assert_close(off, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(hf_off, plain, atol=1e-5, rtol=0)
    assert (adapted - plain).abs().max() > 1e-2, "with adapters on, the LoRA update shows"
    assert torch.equal(again, adapted), "leaving the context turns the adapters back on"

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with model.disable_adapter():
            off16 = body(input_ids=ids).last_hidden_state
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
        zero16 = body(input_ids=ids).last_hidden_state
    assert torch.equal(off16, zero16), "adapters off == adapters whose update is zero, bit for bit"


# ---- loss and gradients against a direct computation and TRL -----------------------------------


def _session(tiny_model_dir, data, out, **kw):
    from tailor.train.session import Session

    return Session.open(_cfg(tiny_model_dir, data, out, val_split=0, **kw), quiet=True)


def _perturb(session) -> None:
    """Move the policy away from the reference (whose log-probs the session has cached)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in session.model.named_parameters():
            if p.requires_grad:
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.05)
                elif "lora" not in name:
                    p.add_(torch.randn_like(p) * 0.02)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _tailor_step(session, micro):
    session.model.zero_grad(set_to_none=True)
    work = session.objective.begin([micro])
    loss, sums = session.objective.loss(*session.parts, micro, work)
    loss.backward()
    return loss.item(), session.objective.record(sums, work), _grads(session.model)


def _hf_logps(model, ex) -> tuple[torch.Tensor, int]:
    """A sequence's summed log-probability of its trained tokens, from a plain HF forward."""
    ids = torch.as_tensor(ex.input_ids)[None]
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    mask = torch.as_tensor(ex.labels[1:] >= 0)
    return (lp * mask).sum(), int(mask.sum())


def _direct_loss(policy, ref_logp, pairs, cfg) -> torch.Tensor:
    """The DPO / IPO (+ RPO) formula over per-sequence HF forwards; ref_logp(example) is the reference's."""
    losses, nll, tokens = [], 0.0, 0
    for p in pairs:
        (c, nc), (r, nr) = _hf_logps(policy, p.chosen), _hf_logps(policy, p.rejected)
        with torch.no_grad():
            rc, rr = ref_logp(p.chosen), ref_logp(p.rejected)
        if cfg.dpo_loss == "ipo":
            losses.append(((c - rc) / nc - (r - rr) / nr - 1 / (2 * cfg.beta)) ** 2)
        else:
            losses.append(-torch.nn.functional.logsigmoid(cfg.beta * ((c - rc) - (r - rr))))
        nll, tokens = nll - c, tokens + nc
    return torch.stack(losses).mean() + cfg.rpo_alpha * nll / tokens


@pytest.mark.parametrize("method, loss, rpo", [("lora", "sigmoid", 0.0), ("full", "ipo", 0.5)])
def test_dpo_loss_and_gradients_equal_a_direct_computation(tiny_model_dir, pairs_file, tmp_path, method, loss, rpo):
    """fp32: tailor's loss (fused forward, one concatenated chosen+rejected batch, the chunked
    log-probs, the cached reference: LoRA's with adapters off, full's from before the first
    step) and its gradients equal per-sequence HF forwards with the formula, to 1e-5."""
    from transformers import AutoModelForCausalLM

    s = _session(tiny_model_dir, pairs_file, tmp_path / "run", method=method, dpo_loss=loss, rpo_alpha=rpo,
                 lr=1e-3 if method == "full" else 5e-3)
    try:
        _perturb(s)
        micro = [0, 5, 7, 11]
        got, _, got_grads = _tailor_step(s, micro)
        if method == "lora":
            def ref_logp(ex):  # the reference is the same module with its adapters off
                with s.model.disable_adapter():
                    return _hf_logps(s.model, ex)[0]
        else:  # the reference is the base, as it was before the first step
            base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

            def ref_logp(ex):
                return _hf_logps(base, ex)[0]
        s.model.zero_grad(set_to_none=True)
        s.model.eval()
        want = _direct_loss(s.model, ref_logp, [s.data.train[i] for i in micro], s.cfg)
        want.backward()
        want_grads = _grads(s.model)
    finally:
        s.close()
    assert got == pytest.approx(want.item(), abs=1e-5) and abs(got - math.log(2)) > 1e-3
    assert got_grads.keys() == want_grads.keys() and len(got_grads) > 4
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method, loss, rpo", [("lora", "sigmoid", 0.0), ("full", "ipo", 0.0), ("lora", "sigmoid", 0.5)])
def test_dpo_equals_trls_dpo_trainer(tiny_model_dir, pairs_file, tmp_path, method, loss, rpo):
    """The same pairs (tailor's token ids) through TRL's DPOTrainer: loss, gradients and its
    logged metrics (rewards/chosen ... logps/rejected) equal tailor's, in fp32."""
    pytest.importorskip("trl")
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    s = _session(tiny_model_dir, pairs_file, tmp_path / "run", method=method, dpo_loss=loss, rpo_alpha=rpo)
    try:
        _perturb(s)
        micro = [1, 2, 3, 8]
        got, record, got_grads = _tailor_step(s, micro)
        pairs = [s.data.train[i] for i in micro]
        policy_state = (get_peft_model_state_dict(s.model) if method == "lora"
                        else {k: v.clone() for k, v in s.model.state_dict().items()})
    finally:
        s.close()
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, bf16=False, use_cpu=True,
                     report_to=[], beta=0.1, loss_type=["sigmoid", "sft"] if rpo else [loss],
                     loss_weights=[1.0, rpo] if rpo else None, gradient_checkpointing=False, max_length=None)
    dummy = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                "chosen": [{"role": "assistant", "content": "ho"}],
                                "rejected": [{"role": "assistant", "content": "no"}]}])
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    if method == "lora":
        trainer = DPOTrainer(model=fresh, args=args, train_dataset=dummy, processing_class=tok,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))
        set_peft_model_state_dict(trainer.model, policy_state)
    else:
        fresh.load_state_dict(policy_state)
        ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        trainer = DPOTrainer(model=fresh, ref_model=ref, args=args, train_dataset=dummy, processing_class=tok)
    model = trainer.model
    model.train()
    inputs = trainer.data_collator([_trl_example(p) for p in pairs])
    want = trainer.compute_loss(model, inputs)
    want.backward()
    want_grads = {n.replace(".default.", ".default."): p.grad for n, p in model.named_parameters()
                  if p.requires_grad and p.grad is not None}
    assert got == pytest.approx(want.item(), abs=1e-5)
    assert {k.removeprefix("base_model.model.") for k in got_grads} == {
        k.removeprefix("base_model.model.") for k in want_grads} and got_grads
    by_name = {k.removeprefix("base_model.model."): v for k, v in want_grads.items()}
    for name, g in got_grads.items():
        torch.testing.assert_close(g, by_name[name.removeprefix("base_model.model.")], atol=1e-5, rtol=1e-4, msg=name)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for ours, theirs in (("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                         ("rewards_margin", "rewards/margins"), ("rewards_accuracy", "rewards/accuracies"),
                         ("logps_chosen", "logps/chosen"), ("logps_rejected", "logps/rejected")):
        assert record[ours] == pytest.approx(logged[theirs], abs=1e-5), ours


def _trl_example(pair) -> dict:
    """TRL's pre-tokenized pair: the prompt, then each reply's trained tokens (tailor trains a reply
    up to its end-of-turn marker, and what follows it is context no trained token sees)."""
    out = {}
    for name, ex in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        trained = (ex.labels >= 0).nonzero()[0]
        start, end = int(trained[0]), int(trained[-1]) + 1
        out["prompt_ids"] = ex.input_ids[:start].tolist()
        out[f"{name}_ids"] = ex.input_ids[start:end].tolist()
    return out


# ---- whole runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("method, reference", [("lora", "cached"), ("lora", "copy"), ("full", "cached"),
                                               ("full", "copy")])
def test_step_zero_is_ln2_with_zero_rewards(tiny_model_dir, pairs_file, tmp_path, method, reference):
    """Before the first update the policy is the reference: loss ln 2, rewards 0, whichever way
    the reference is made."""
    run = train(_cfg(tiny_model_dir, pairs_file, tmp_path / "run", method=method, dpo_reference=reference,
                     max_steps=1, lr=1e-3, eval_every=100), quiet=True)
    first = _metrics(run.out)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for key in ("rewards_chosen", "rewards_rejected", "rewards_margin"):
        assert first[key] == pytest.approx(0.0, abs=1e-5), key
    assert first["logps_chosen"] < 0 and first["pairs"] == 4


def test_held_out_preference_accuracy_rises_above_0_8(tiny_model_dir, tmp_path):
    """A learnable preference (a pirate greeting over a plain one, around random words): after a few
    steps the held-out pairs' chosen replies win; the artifacts carry every DPO metric."""
    data = write_preference_jsonl(tmp_path / "train.jsonl", 64, seed=2)
    val = write_preference_jsonl(tmp_path / "val.jsonl", 16, seed=3, style="trl")
    run = train(_cfg(tiny_model_dir, data, tmp_path / "run", val=str(val), max_steps=10, batch_size=8,
                     eval_every=5, eval_samples=1), quiet=True)
    log, evals = _metrics(run.out), _metrics(run.out, "eval.jsonl")
    assert set(log[0]) >= {"loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy",
                           "logps_chosen", "logps_rejected", "tokens_per_s"}
    assert log[-1]["loss"] < log[0]["loss"] and log[-1]["rewards_margin"] > 0
    assert [e["step"] for e in evals] == [5, 10] and evals[-1]["val_pairs"] == 16
    assert evals[-1]["val_rewards_accuracy"] > 0.8 and evals[-1]["val_rewards_margin"] > 0
    assert evals[-1]["samples"] and evals[-1]["samples"][0]["reference"].startswith("Ahoy matey")
    card = (run.final / "README.md").read_text()
    assert "final validation preference accuracy" in card and "| beta | 0.1 |" in card
    assert (run.out / "loss.png").stat().st_size > 0


def test_grad_accum_equals_one_big_batch(tiny_model_dir, pairs_file, tmp_path):
    """Full DPO: 2 micro-batches of 2 pairs and one of 4 give the same losses, metrics and weights."""
    from safetensors.torch import load_file

    runs = []
    for name, kw in (("big", dict(batch_size=4)), ("accum", dict(batch_size=2, grad_accum=2))):
        run = train(_cfg(tiny_model_dir, pairs_file, tmp_path / name, method="full", lr=1e-3, max_steps=3,
                         eval_every=100, **kw), quiet=True)
        runs.append((_metrics(run.out), load_file(str(run.final / "model.safetensors"))))
    (m1, w1), (m2, w2) = runs
    for a, b in zip(m1, m2):
        for key in ("loss", "rewards_margin", "rewards_accuracy", "logps_chosen", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=0, msg=k)


def test_full_dpo_resumes_exactly_after_kill_9_without_its_cache(tiny_model_dir, pairs_file, tmp_path):
    """SIGKILL while writing checkpoint 4 of 6; the reference cache is then deleted, so the resumed
    run recomputes it from the base (the policy has moved on): the same losses and metrics as a
    run never stopped."""
    keys = dict(method="full", lr=1e-3, max_steps=6, save_every=2, eval_every=3, schedule="constant", warmup=0)
    whole = train(_cfg(tiny_model_dir, pairs_file, tmp_path / "whole", **keys), quiet=True)
    out = tmp_path / "killed"
    (tmp_path / "cfg.json").write_text(json.dumps(_cfg(tiny_model_dir, pairs_file, out, **keys).__dict__))
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json, os, signal
        from tailor.train import checkpoint, TrainConfig, train
        real_save = checkpoint.save

        def save(out_dir, **kw):
            if kw["meta"]["step"] == 4:  # die for real halfway through writing checkpoint 4
                checkpoint.torch.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
            return real_save(out_dir, **kw)

        checkpoint.save = save
        train(TrainConfig(**json.load(open({str(tmp_path / "cfg.json")!r}))), quiet=True)
    """))
    proc = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000002"]
    cache = Path(tmp_path / "home" / "datasets" / "reference")
    assert list(cache.glob("*.npy"))
    shutil.rmtree(cache)
    resumed = train(resume_config(out), quiet=True)
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6, rel=0)
    for a, b in zip(_metrics(out), _metrics(whole.out)):
        assert a["rewards_margin"] == pytest.approx(b["rewards_margin"], abs=1e-6)
    assert resumed.val["val_loss"] == pytest.approx(whole.val["val_loss"], abs=1e-6)


# ---- refusals --------------------------------------------------------------------------------


def test_a_file_of_the_other_kind_is_refused_naming_the_right_flag(tiny_model_dir, pairs_file, tmp_path, capsys):
    from tailor.cli import main

    chat = write_chat_jsonl(tmp_path / "chat.jsonl", 12)
    with pytest.raises(TailorError, match="train it with --objective dpo"):
        train(_cfg(tiny_model_dir, pairs_file, tmp_path / "a", objective="sft"), quiet=True)
    with pytest.raises(TailorError, match="Train this file with --objective sft"):
        train(_cfg(tiny_model_dir, chat, tmp_path / "b"), quiet=True)
    assert main(["train", "--data", str(chat), "--model", str(tiny_model_dir), "--objective", "dpo",
                 "--out", str(tmp_path / "c"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "--objective sft" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="beta: must be above 0"):
        train(_cfg(tiny_model_dir, pairs_file, tmp_path / "d", beta=0.0), quiet=True)


def test_resume_refuses_another_objective_or_beta(tiny_model_dir, pairs_file, tmp_path, capsys):
    from tailor.cli import main

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, pairs_file, out, max_steps=2, eval_every=100), quiet=True)
    assert main(["train", "--resume", str(out), "--objective", "sft", "--max-steps", "3"]) == 2
    assert "objective: saved dpo, now sft" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--beta", "0.5", "--max-steps", "3"]) == 2
    assert "beta: saved 0.1, now 0.5" in capsys.readouterr().err


# ---- raw text: continued pretraining ---------------------------------------------------------


def test_raw_text_trains_every_token(tiny_model_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Doc {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 4 + 1)})
                            + "\n" for i in range(30)))
    run = train(TrainConfig(data=str(docs), model=str(tiny_model_dir), out=str(tmp_path / "run"), max_length=32,
                            batch_size=4, max_steps=6, lr=5e-3, dtype="float32", eval_samples=0, val_split=0.1),
                quiet=True)
    log = _metrics(run.out)
    # every row (32 tokens, the last of the file fewer) trains all its next-token targets: nothing is masked
    assert all(r["trained_tokens"] == r["tokens"] - math.ceil(r["tokens"] / 32) for r in log)
    assert log[0]["tokens"] == 4 * 32
    assert log[-1]["loss"] < log[0]["loss"] and run.val["val_tokens"] > 0
