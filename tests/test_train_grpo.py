"""GRPO on the one loop (tailor.train.objectives.grpo), on the tiny model: the loss and its
gradients on a fixed batch of rollouts against a direct computation of each loss type's formula
and against TRL's GRPOTrainer, zero advantages when a group's rewards are equal, a reward that
rises, and exact resume after kill -9 with the replies a checkpoint keeps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from trainkit import write_prompt_jsonl

from tailor.train import TrainConfig, resume_config, train

GRADER = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "ilike"}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_prompt_jsonl(tmp_path_factory.mktemp("grpo") / "prompts.jsonl", 24, seed=1)


def _cfg(tiny_model_dir, data, out, **kw):
    base = dict(data=str(data), model=str(tiny_model_dir), out=str(out), objective="grpo", grader=json.dumps(GRADER),
                dtype="float32", lora_dropout=0.0, batch_size=2, num_generations=4, max_completion_tokens=8,
                max_steps=4, lr=1e-2, eval_samples=1, max_length=128)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out: Path, name="metrics.jsonl") -> list[dict]:
    return [json.loads(ln) for ln in (out / name).read_text().splitlines()]


# ---- the loss on a fixed batch of rollouts ------------------------------------------------------


def _session(tiny_model_dir, data, out, **kw):
    from tailor.train.session import Session

    return Session.open(_cfg(tiny_model_dir, data, out, val_split=0, **kw), quiet=True)


def _move(model, seed: int, std: float) -> None:
    """Move the LoRA adapters (B starts at 0: the policy would be the reference)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * std)


def _rollouts(session, rewards: list[float]):
    """Two prompts x 4 fixed replies of 1 to 8 tokens, some ended by the stop token, with `rewards`."""
    from tailor.train.rewards import Score
    from tailor.train.rollouts import Rollout

    gen = torch.Generator().manual_seed(3)
    stop = session.data.prepared.stop_token_ids[0]
    out = []
    for k, r in enumerate(rewards):
        n = [3, 8, 1, 5, 8, 2, 6, 4][k]
        ids = torch.randint(10, 400, (n,), generator=gen).tolist()
        if k % 3 == 0:
            ids[-1] = stop
        out.append(Rollout(session.data.train[k // 4].input_ids, ids, "", n == 8 and k % 3, Score(r)))
    return out


def _hf_token_logps(model, rollout, temperature=1.0) -> torch.Tensor:
    """Each reply token's log-probability from a plain HF forward of prompt + reply."""
    ids = torch.as_tensor(rollout.input_ids)[None]
    logits = model(input_ids=ids, use_cache=False).logits[0].float() / temperature
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    return lp[len(rollout.prompt) - 1:]


def _advantages(rewards: torch.Tensor, g: int) -> torch.Tensor:
    """TRL's: (r - group mean) / (group std (Bessel) + 1e-4)."""
    grouped = rewards.view(-1, g)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)


def _direct_loss(model, rollouts, adv, old, ref, cfg) -> torch.Tensor:
    """The formula of the module doc, reply by reply, from per-sequence HF forwards."""
    per_seq, tokens = [], 0
    for k, r in enumerate(rollouts):
        lp = _hf_token_logps(model, r, cfg.temperature)
        ratio = torch.exp(lp - (old[k] if old is not None else lp.detach()))
        loss = -torch.min(ratio * adv[k], ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * adv[k])
        if ref is not None:
            loss = loss + cfg.beta * ratio * (torch.exp(ref[k] - lp) - (ref[k] - lp) - 1)
        per_seq.append(loss)
        tokens += len(lp)
    if cfg.grpo_loss == "grpo":
        return torch.stack([x.mean() for x in per_seq]).mean()
    total = torch.cat(per_seq).sum()
    return total / (len(rollouts) * cfg.max_completion_tokens) if cfg.grpo_loss == "dr_grpo" else total / tokens


def _grads(model) -> dict[str, torch.Tensor]:
    return {n.removeprefix("base_model.model."): p.grad.clone() for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


CASES = [("dapo", 0.0, 1, 1.0), ("grpo", 0.0, 1, 1.0), ("dr_grpo", 0.0, 1, 1.0), ("dapo", 0.04, 1, 0.7),
         ("grpo", 0.04, 2, 1.0), ("dr_grpo", 0.1, 2, 1.3), ("dapo", 0.0, 2, 1.0)]


@pytest.mark.parametrize("loss_type, beta, iterations, temperature", CASES)
def test_loss_and_gradients_equal_the_formula_and_trl(tiny_model_dir, prompts_file, tmp_path, loss_type, beta,
                                                     iterations, temperature):
    """fp32, LoRA: tailor's GRPO loss and gradients on a fixed batch of rollouts and rewards
    (fused forward, all replies in one packed row, chunked log-probs, the reference with the
    adapters off) equal the loss type's formula over per-sequence HF forwards, and TRL's
    GRPOTrainer._compute_loss on the same tokens, to 1e-5. With --num-iterations 2 the policy
    moves after sampling, so the ratio is clipped for some tokens."""
    s = _session(tiny_model_dir, prompts_file, tmp_path / "run", grpo_loss=loss_type, beta=beta,
                 num_iterations=iterations, temperature=temperature)
    try:
        _move(s.model, 1, 0.05)
        rewards = [1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0]
        rollouts = _rollouts(s, rewards)
        work = s.objective.work([[0, 1]], {0: rollouts})
        s.model.eval()
        with torch.no_grad():
            old = [_hf_token_logps(s.model, r, temperature) for r in rollouts] if iterations > 1 else None
            with s.model.disable_adapter():
                ref = [_hf_token_logps(s.model, r, temperature) for r in rollouts] if beta else None
        if iterations > 1:
            _move(s.model, 2, 0.3)  # the optimizer steps of the cycle so far
        s.model.train()
        s.model.zero_grad(set_to_none=True)
        loss, sums = s.objective.loss(*s.parts, work.micro[0], work)
        loss.backward()
        got, got_grads = loss.item(), _grads(s.model)
        record = s.objective.record(sums, work)
        adv = _advantages(torch.tensor(rewards), 4)
        s.model.zero_grad(set_to_none=True)
        want = _direct_loss(s.model, rollouts, adv, old, ref, s.cfg)
        want.backward()
        direct_grads = _grads(s.model)
        trl = _trl_loss(tiny_model_dir, tmp_path, s, rollouts, adv, old, ref) if _has_trl() else None
    finally:
        s.close()
    assert got == pytest.approx(want.item(), abs=1e-5)
    assert got_grads.keys() == direct_grads.keys() and len(got_grads) > 4
    assert sum(float(g.norm()) for g in got_grads.values()) > 1e-3  # a real gradient, not two zeros
    for name, g in direct_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
    assert record["reward_mean"] == pytest.approx(sum(rewards) / 8)
    assert record["completion_length"] == pytest.approx(sum(len(r.completion) for r in rollouts) / 8)
    assert (record["clip_fraction"] > 0) == (iterations > 1) and ("kl" in record) == (beta > 0)
    if trl is not None:
        trl_loss, trl_grads, trl_metrics = trl
        assert got == pytest.approx(trl_loss, abs=1e-5)
        for name, g in got_grads.items():
            torch.testing.assert_close(g, trl_grads[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        assert record["clip_fraction"] == pytest.approx(trl_metrics["clip_ratio/region_mean"], abs=1e-6)
        if beta:
            assert record["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-6)


def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def _trl_loss(tiny_model_dir, tmp_path, s, rollouts, adv, old, ref):
    """TRL's GRPOTrainer._compute_loss on the same tokens: left-padded prompts, right-padded
    replies, the same LoRA weights, advantages, pi_old and reference log-probs."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    c = s.cfg
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=c.max_completion_tokens, beta=c.beta, loss_type=c.grpo_loss,
                      temperature=c.temperature, epsilon=c.epsilon, use_cpu=True, bf16=False, report_to=[],
                      gradient_checkpointing=False)
    dummy = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 8)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32),
                          reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=dummy, processing_class=AutoTokenizer.from_pretrained(str(tiny_model_dir)),
                          peft_config=LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    set_peft_model_state_dict(trainer.model, get_peft_model_state_dict(s.model))
    p, cl = max(len(r.prompt) for r in rollouts), max(len(r.completion) for r in rollouts)
    inputs = {"prompt_ids": torch.zeros(8, p, dtype=torch.long), "prompt_mask": torch.zeros(8, p, dtype=torch.long),
              "completion_ids": torch.zeros(8, cl, dtype=torch.long),
              "completion_mask": torch.zeros(8, cl, dtype=torch.long), "advantages": adv.float(),
              "num_items_in_batch": torch.tensor(sum(len(r.completion) for r in rollouts))}
    for name in ("old", "ref"):
        if {"old": old, "ref": ref}[name] is not None:
            inputs[f"{name}_per_token_logps"] = torch.zeros(8, cl)
    for k, r in enumerate(rollouts):
        n, m = len(r.prompt), len(r.completion)
        inputs["prompt_ids"][k, p - n:], inputs["prompt_mask"][k, p - n:] = torch.as_tensor(r.prompt), 1
        inputs["completion_ids"][k, :m], inputs["completion_mask"][k, :m] = torch.tensor(r.completion), 1
        if old is not None:
            inputs["old_per_token_logps"][k, :m] = old[k]
        if ref is not None:
            inputs["ref_per_token_logps"][k, :m] = ref[k]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.item(), _grads(trainer.model), {k: v[-1] for k, v in trainer._metrics["train"].items()}


def test_equal_rewards_give_zero_advantages_and_no_gradient(tiny_model_dir, prompts_file, tmp_path):
    """Every group's rewards equal (two groups, two different values): the advantages are 0,
    and with beta 0 so is every gradient, exactly."""
    s = _session(tiny_model_dir, prompts_file, tmp_path / "run")
    try:
        _move(s.model, 1, 0.05)
        work = s.objective.work([[0, 1]], {0: _rollouts(s, [1.0] * 4 + [0.3] * 4)})
        assert (work.micro[0].advantages == 0).all()
        s.model.zero_grad(set_to_none=True)
        loss, sums = s.objective.loss(*s.parts, work.micro[0], work)
        loss.backward()
        grads = _grads(s.model)
        record = s.objective.record(sums, work)
    finally:
        s.close()
    assert loss.item() == 0.0 and grads and all(torch.count_nonzero(g) == 0 for g in grads.values())
    assert record["frac_reward_zero_std"] == 1.0 and record["reward_mean"] == pytest.approx(0.65)


# ---- whole runs ------------------------------------------------------------------------------


def _reward_module(folder: Path) -> str:
    """A --reward function: shorter replies score higher (learnable by the tiny model: end early)."""
    (folder / "short_reward.py").write_text(textwrap.dedent("""
        def short(sample, item):
            return 1.0 - min(len(sample["output_text"]), 40) / 40
    """))
    return "short_reward:short"


def test_the_reward_rises_and_every_output_carries_it(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """--reward module:function on the tiny model: the mean reward of the last steps is clearly
    above the first steps'; metrics.jsonl, eval.jsonl (val_reward_mean), loss.png and the model
    card carry the rewards. Full fine-tuning: the random tiny model's logits are nearly flat
    (std 0.16) and its final norm and tied embeddings are what can sharpen them; LoRA barely
    moves them in 12 steps."""
    monkeypatch.chdir(tmp_path)
    run = train(_cfg(tiny_model_dir, prompts_file, tmp_path / "run", grader=None, reward=_reward_module(tmp_path),
                     method="full", max_steps=12, lr=3e-2, eval_every=6, num_generations=6, max_completion_tokens=12,
                     schedule="constant", warmup=0), quiet=True)
    log, evals = _metrics(run.out), _metrics(run.out, "eval.jsonl")
    assert set(log[0]) >= {"loss", "reward_mean", "reward_std", "completion_length", "clip_fraction",
                           "frac_reward_zero_std", "rollout_tokens_per_s", "tokens_per_s"}
    first, last = [r["reward_mean"] for r in log[:3]], [r["reward_mean"] for r in log[-3:]]
    assert sum(last) / 3 > sum(first) / 3 + 0.15, (first, last)
    assert [e["step"] for e in evals] == [6, 12] and evals[-1]["val_reward_mean"] > 0.5
    assert evals[-1]["samples"] and "reward" in evals[-1]["samples"][0]
    card = (run.final / "README.md").read_text()
    assert "final validation mean reward" in card and "| num_generations | 6 |" in card
    assert (run.out / "loss.png").stat().st_size > 0


def test_full_fine_tuning_with_a_kl_penalty_runs(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """Full fine-tuning: the engine re-reads the trained weights each step, the reference is a
    frozen copy of the base; step 1's KL is 0 (the policy is the base), later ones are not."""
    monkeypatch.chdir(tmp_path)
    run = train(_cfg(tiny_model_dir, prompts_file, tmp_path / "run", method="full", lr=1e-2, beta=0.1, max_steps=3,
                     grader=None, reward=_reward_module(tmp_path), eval_every=100), quiet=True)
    log = _metrics(run.out)
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6) and log[-1]["kl"] > 0
    assert (run.final / "model.safetensors").is_file()


def test_resume_after_kill_9_mid_cycle_reuses_the_kept_replies(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """--num-iterations 2: steps 3 and 4 train on the replies sampled at step 3. SIGKILL while
    writing checkpoint 4 leaves checkpoint 3 (mid-cycle): the resumed run trains step 4 on the
    replies checkpoint 3 kept, then samples on (seeded): the same metrics as a run never stopped."""
    monkeypatch.chdir(tmp_path)
    keys = dict(max_steps=6, save_every=3, eval_every=100, num_iterations=2, schedule="constant", warmup=0, beta=0.05,
                grader=None, reward=_reward_module(tmp_path), lr=5e-2)
    whole = train(_cfg(tiny_model_dir, prompts_file, tmp_path / "whole", **keys), quiet=True)
    out = tmp_path / "killed"
    cfg = _cfg(tiny_model_dir, prompts_file, out, **keys)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.__dict__))
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json, os, signal
        from tailor.train import checkpoint, TrainConfig, train
        real_save = checkpoint.save

        def save(out_dir, **kw):
            if kw["meta"]["step"] == 6:  # die for real while writing the final checkpoint
                checkpoint.torch.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
            return real_save(out_dir, **kw)

        checkpoint.save = save
        train(TrainConfig(**json.load(open({str(tmp_path / "cfg.json")!r}))), quiet=True)
    """))
    proc = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000003"]
    resumed = train(resume_config(out), quiet=True)
    a, b = _metrics(out), _metrics(whole.out)
    assert [r["step"] for r in a] == list(range(1, 7))
    for x, y in zip(a, b):
        for key in ("loss", "reward_mean", "completion_length", "clip_fraction", "kl", "grad_norm"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["step"], key)
    assert "sampling_s" in a[2] and "sampling_s" not in a[3]  # step 4 trained on step 3's replies again
    assert a[3]["reward_mean"] == a[2]["reward_mean"] and a[3]["clip_fraction"] > 0 and a[-1]["kl"] > 0
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)


def test_response_format_constrains_the_replies_and_graders_read_output_json(tiny_model_dir, prompts_file, tmp_path):
    """--response-format json_schema: every sampled reply is the schema's JSON, and a grader that
    reads {{sample.output_json.answer}} scores every reply without an error."""
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": schema}}
    grader = {"type": "string_check", "name": "yes", "input": "{{sample.output_json.answer}}", "reference": "yes",
              "operation": "eq"}
    run = train(_cfg(tiny_model_dir, prompts_file, tmp_path / "run", grader=json.dumps(grader),
                     response_format=json.dumps(fmt), max_completion_tokens=24, max_steps=2, eval_every=2,
                     eval_samples=4), quiet=True)
    log, evals = _metrics(run.out), _metrics(run.out, "eval.jsonl")
    assert all(r["grader_errors"] == 0 and r["truncated"] == 0 for r in log)
    answers = [json.loads(s["answer"]) for s in evals[-1]["samples"]]
    assert answers and all(a["answer"] in ("yes", "no") for a in answers)
    assert all(s["reward"] == float(a["answer"] == "yes") for s, a in zip(evals[-1]["samples"], answers))


# ---- the command line ------------------------------------------------------------------------


def test_data_check_names_each_line_and_key_the_grader_lacks(tiny_model_dir, prompts_file, tmp_path, capsys):
    from tailor.cli import main

    lines = prompts_file.read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["answer"]
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(lines[:2] + [json.dumps(broken)] + lines[3:]) + "\n")
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(GRADER))
    assert main(["data", "check", str(data), "--objective", "rft", "--grader", str(grader)]) == 1
    out = capsys.readouterr().out
    assert "error line 3, answer: the grader reads {{ item.answer }}" in out and "1 error(s)" in out
    assert "RFT prompts" in out and "grader:    reads {{ item.answer }}" in out
    assert main(["data", "check", str(prompts_file)]) == 0  # a prompts file is recognised without --objective
    assert "RFT prompts" in capsys.readouterr().out
    assert main(["data", "show", str(prompts_file), "--model", str(tiny_model_dir), "--line", "2"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("line 2: RFT prompt") and shown.rstrip().endswith(json.dumps({"answer": json.loads(
        prompts_file.read_text().splitlines()[1])["answer"]}))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
                                                                              "content": "ho"}]}) + "\n")
    assert main(["data", "check", str(chat), "--objective", "grpo"]) == 1
    out = capsys.readouterr().out
    assert "error line 1, messages[1].role" in out and "last_message_not_user" in out


def test_train_refuses_what_cannot_run_naming_the_fix(tiny_model_dir, prompts_file, tmp_path, capsys):
    from trainkit import write_chat_jsonl

    from tailor.cli import main

    base = ["train", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--max-steps", "1"]
    assert main(base + ["--data", str(prompts_file), "--objective", "rft"]) == 2
    assert "--grader GRADER.json or as --reward module:function" in capsys.readouterr().err
    assert main(base + ["--data", str(prompts_file)]) != 0  # sft on prompts
    assert "--objective grpo" in capsys.readouterr().err
    chat = write_chat_jsonl(tmp_path / "chat.jsonl", 12)
    assert main(base + ["--data", str(chat), "--objective", "grpo", "--grader", json.dumps(GRADER)]) != 0
    assert "last_message_not_user" in capsys.readouterr().err
    bad = dict(GRADER, operation="near")
    assert main(base + ["--data", str(prompts_file), "--objective", "grpo", "--grader", json.dumps(bad)]) == 2
    assert "grader.operation" in capsys.readouterr().err


def test_shared_prompt_prefill_samples_what_separate_prefills_do(tiny_model_dir):
    """A rollout batch prefills each distinct prompt once and copies its cache rows to the other
    replies' slots: the replies (seeded) are the very ones each request's own prefill gives."""
    from transformers import AutoModelForCausalLM

    from tailor.infer.sampling import SamplingParams
    from tailor.train.generate import LiveBackend, sample_replies

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    live = LiveBackend(model, 64, torch.float32)
    a, b = [5, 6, 7, 8, 9, 10], [11, 12, 13]
    prompts = [a, a, a, b, b]
    params = [SamplingParams(max_new_tokens=10, temperature=1.0, seed=s) for s in range(5)]
    together = sample_replies(live, prompts, params)
    alone = [sample_replies(live, [p], [sp])[0] for p, sp in zip(prompts, params)]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert len({tuple(r.tokens) for r in together[:3]}) > 1  # the seeds differ, so do the replies
