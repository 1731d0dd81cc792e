"""One benchmark run of TRL's DPOTrainer, the peer. Prints one JSON line of results.

Same work as tailor's run (bench/run_tailor_dpo.py): the same model folder, preference pairs
(bench/dpo_data.py) in the same order (bench/common.py tailor_order over the pairs' lengths, read
through a sequential sampler), sigmoid loss, beta, micro-batch, accumulation, learning rate,
schedule and optimizer steps; the first step is a warm-up and is not timed.

TRL's best CPU configuration: --bf16 (Trainer's autocast over fp32 weights), and
precompute_ref_log_probs, so no reference forward runs during the timed steps and full
fine-tuning holds no second model (its default would load one); tailor's default, the cached
reference, does the same. The held-out preference loss is scored afterwards by bench/common.py
against the base model's log-probs, which the driver computes once.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from common import heldout_dpo_loss, pair_logps, pair_tokens, process_age, tailor_order


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--reference", required=True, help="JSON of the base model's held-out log-probs")
    ap.add_argument("--method", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, required=True, help="timed optimizer steps (plus one warm-up)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--no-precompute", dest="precompute", action="store_false",
                    help="reference forward every step (LoRA: adapters off; full: a second model)")
    a = ap.parse_args()

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ds = load_dataset("json", data_files=a.data, split="train")
    order_s = time.perf_counter()
    lengths = [len(c) + len(r) for c, r, _ in pair_tokens(tok, a.data)]
    ds = ds.select(tailor_order(lengths, steps=a.steps + 1, batch_size=a.batch_size, grad_accum=a.grad_accum,
                                seed=0, max_length=a.max_length))
    order_s = time.perf_counter() - order_s  # the bench's own work: out of TRL's time to first step
    peft_config = None
    if a.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    cfg = DPOConfig(
        output_dir="/tmp/trl-dpo-bench", max_steps=a.steps + 1, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[],
        seed=0, max_length=a.max_length, beta=a.beta, loss_type=["sigmoid"], bf16=a.bf16,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True,
        train_sampling_strategy="sequential", precompute_ref_log_probs=a.precompute,
        gradient_checkpointing=False,
    )
    marks: list[float] = []
    tokens = {"real": 0, "trained": 0}
    losses: list[float] = []
    seen = {"first_step_s": None}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())
            if seen["first_step_s"] is None:
                seen["first_step_s"] = process_age() - order_s

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class CountingTrainer(DPOTrainer):
        def training_step(self, model, inputs, *args, **kw):
            if marks:  # the warm-up step is not counted
                tokens["real"] += int(inputs["attention_mask"].sum())
                tokens["trained"] += int(inputs["completion_mask"].sum())
            return super().training_step(model, inputs, *args, **kw)

    trainer = CountingTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                              peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    seconds = marks[-1] - marks[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training's peak, before scoring
    policy = trainer.model.merge_and_unload() if a.method == "lora" else trainer.model
    scores = heldout_dpo_loss(pair_logps(policy.float(), tok, a.val), json.load(open(a.reference)), a.beta)
    print(json.dumps({
        "tool": "trl-bf16" if a.bf16 else "trl-fp32", "method": a.method, "steps": a.steps, "seconds": seconds,
        "tokens": tokens["real"], "trained_tokens": tokens["trained"], "tokens_per_s": tokens["real"] / seconds,
        "trained_tokens_per_s": tokens["trained"] / seconds, "peak_rss_mb": peak, "losses": losses,
        "first_step_s": seen["first_step_s"], "precompute": a.precompute, **scores,
    }))


if __name__ == "__main__":
    main()
