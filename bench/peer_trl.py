"""One benchmark run of TRL's SFTTrainer, the peer. Prints one JSON line of results.

Same work as tailor's run: the same model folder, dataset, assistant-only loss (a copy of the
SmolLM2 template with {% generation %} markers, checked by bench/run.py to give the same masks
as tailor's renderer), micro-batch, accumulation, max length, learning rate, schedule and
optimizer steps. The first optimizer step is a warm-up and is not timed.

--bf16 is TRL's best CPU configuration (Trainer's bf16 autocast over fp32 weights); the run
records the dtype of a weight and of an activation seen inside the model, to prove it.
--tailor-order reads the examples in tailor's order (bench/common.py tailor_order) through a
sequential sampler, so both tools train the same micro-batches.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from common import SMOL_TRAINING_TEMPLATE, heldout_loss, marked_examples, process_age, tailor_order


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, required=True, help="timed optimizer steps (plus one warm-up)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (TRL's mixed precision)")
    ap.add_argument("--tailor-order", action="store_true", help="train the examples in tailor's order")
    ap.add_argument("--val", help="JSONL scored after training with common.heldout_loss")
    a = ap.parse_args()

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.chat_template = SMOL_TRAINING_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ds = load_dataset("json", data_files=a.data, split="train")
    order_s = time.perf_counter()
    if a.tailor_order:
        lengths = [len(ids) for ids, _ in marked_examples(AutoTokenizer.from_pretrained(a.model), a.data)]
        ds = ds.select(tailor_order(lengths, steps=a.steps + 1, batch_size=a.batch_size, grad_accum=a.grad_accum,
                                    seed=0, max_length=a.max_length))
    order_s = time.perf_counter() - order_s  # the bench's own work: taken out of TRL's time to first step
    peft_config = None
    if a.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    cfg = SFTConfig(
        output_dir="/tmp/trl-bench", max_steps=a.steps + 1, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr, lr_scheduler_type=a.schedule,
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, max_length=a.max_length, assistant_only_loss=True, packing=False,
        bf16=a.bf16, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True, shuffle_dataset=False,
        train_sampling_strategy="sequential" if a.tailor_order else "random",
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

    class CountingTrainer(SFTTrainer):
        def training_step(self, model, inputs, *args, **kw):
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(inputs["input_ids"].numel())
            trained = int((inputs["labels"][:, 1:] != -100).sum())
            if marks:  # the warm-up step is not counted
                tokens["real"] += real
                tokens["trained"] += trained
            return super().training_step(model, inputs, *args, **kw)

    trainer = CountingTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                              peft_config=peft_config, callbacks=[Timer()])
    probe = dtype_probe(trainer.model)
    trainer.train()
    seconds = marks[-1] - marks[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training's peak, before scoring
    val_loss = heldout_loss(trainer.model, tok, a.val) if a.val else None
    print(json.dumps({
        "tool": "trl-bf16" if a.bf16 else "trl-fp32", "method": a.method, "steps": a.steps, "seconds": seconds,
        "tokens": tokens["real"], "trained_tokens": tokens["trained"],
        "tokens_per_s": tokens["real"] / seconds, "trained_tokens_per_s": tokens["trained"] / seconds,
        "peak_rss_mb": peak, "losses": losses, "val_loss": val_loss, "first_step_s": seen["first_step_s"],
        "weight_dtype": probe.get("weight"), "activation_dtype": probe.get("activation"),
        "tailor_order": a.tailor_order,
    }))


def dtype_probe(model) -> dict:
    """The dtype of the first linear layer's weight and of its output, seen once in training."""
    import torch

    layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen: dict = {"weight": str(layer.weight.dtype)}

    def hook(module, args, output):
        seen.setdefault("activation", str(output.dtype))

    layer.register_forward_hook(hook)  # stays on: setdefault keeps the first (training) forward's dtype
    return seen


if __name__ == "__main__":
    main()
