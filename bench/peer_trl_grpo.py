"""One benchmark run of TRL's GRPOTrainer, the peer. Prints one JSON line of results.

Same work as tailor's run (bench/run_tailor_grpo.py): the same model folder and prompts
(bench/grpo_task.py), the same reward, prompts per step, replies per prompt, reply length,
temperature, LoRA, learning rate, schedule, loss (dapo, beta 0: both tools' defaults) and steps.
TRL's best CPU configuration: transformers generation (no vLLM on a CPU) and --bf16 (Trainer's
autocast over fp32 weights). Timed per step by a TrainerCallback (generation, reward, forward,
backward, optimizer), the generation itself by wrapping GRPOTrainer._generate; step 1 is a
warm-up and is not timed. The prompt order is TRL's own sampler's (each tool draws its steps'
prompts from the same set).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from grpo_task import prompts, reward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, required=True, help="timed optimizer steps (plus one warm-up)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(a.seed)
    rows = [{"prompt": p["messages"], "answer": p["answer"]} for p in prompts(a.data)]

    def arithmetic(completions, answer, **kw):
        return [reward(c[0]["content"], ans) for c, ans in zip(completions, answer)]

    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-grpo-bench-"),
                      per_device_train_batch_size=a.prompts * a.generations,
                      num_generations=a.generations, max_completion_length=a.max_completion_tokens,
                      temperature=a.temperature, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
                      weight_decay=0.0, max_grad_norm=1.0, max_steps=a.steps + 1, logging_steps=1, save_strategy="no",
                      report_to=[], seed=a.seed, bf16=a.bf16, use_cpu=True, gradient_checkpointing=False, beta=0.0,
                      loss_type="dapo", dataloader_num_workers=0)
    peft_config = None
    if a.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32),
                          reward_funcs=arithmetic, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=AutoTokenizer.from_pretrained(a.model), peft_config=peft_config)
    sampling: list[tuple[float, int]] = []
    generate = trainer._generate

    def timed_generate(*args_, **kw):
        t = time.perf_counter()
        out = generate(*args_, **kw)
        sampling.append((time.perf_counter() - t, sum(len(c) for c in out[1])))
        return out

    trainer._generate = timed_generate
    steps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *args_, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, *args_, **kw):
            steps.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    timed = sampling[1:]
    print(json.dumps({
        "tool": "trl-bf16" if a.bf16 else "trl-fp32", "method": a.method, "steps": a.steps,
        "rewards": [h["reward"] for h in logged], "step_s": sum(steps[1:]) / len(steps[1:]),
        "sampling_s": sum(s for s, _ in timed) / len(timed),
        "rollout_tokens_per_s": sum(n for _, n in timed) / sum(s for s, _ in timed),
        "completion_length": sum(h["completions/mean_length"] for h in logged[1:]) / len(logged[1:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
