"""`make rft-demo`: reinforcement fine-tuning (GRPO) of SmolLM2-135M-Instruct on short additions.

1. The base model answers the 32 held-out sums (greedy, as the server would); the example's grader
   scores each answer (examples/arith-grader.json: half for a reply whose last number is the sum,
   half more when the reply is the sum alone).
2. GRPO with LoRA on examples/arith-rft.jsonl (examples/make_arith_data.py writes it): each step
   samples 8 replies to each of 4 prompts through tailor's engine, grades them, and moves the
   model toward the replies that scored above their group's mean.
3. The tuned model answers the same sums; the reward curve is in the run's metrics.jsonl and
   loss.png, the validation rewards in eval.jsonl.

The same run from the command line:  tailor train examples/arith-rft.yaml
"""

import os

# Threads that wait by sleeping, not spinning (see examples/demo.py); before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

HERE = Path(__file__).parent
SHOWN = 6  # held-out sums printed before and after


def answer_and_grade(model, tokenizer, prompts: list[dict], grader: dict) -> list[tuple[str, float]]:
    from tailor import graders
    from tailor.train.generate import greedy_replies

    replies = [t.strip() for t in greedy_replies(model, tokenizer, [p["messages"] for p in prompts],
                                                 max_new_tokens=32)]
    scored = graders.run_many(grader, [(r, p) for r, p in zip(replies, prompts)])
    return [(r, s["reward"]) for r, s in zip(replies, scored)]


def main() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    from tailor import graders, models
    from tailor.train import TrainConfig, train

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    keys = yaml.safe_load((HERE / "arith-rft.yaml").read_text())
    keys.update(data=str(HERE / "arith-rft.jsonl"), val=str(HERE / "arith-rft-val.jsonl"),
                grader=str(HERE / "arith-grader.json"), out=os.environ.get("TAILOR_DEMO_OUT", keys["out"]))
    grader = graders.check(json.loads((HERE / "arith-grader.json").read_text()))
    held_out = [json.loads(line) for line in (HERE / "arith-rft-val.jsonl").read_text().splitlines()]
    print("Loading the base model (SmolLM2-135M-Instruct) and answering the held-out sums ...", flush=True)
    base, tok = models.load(None)
    before = answer_and_grade(base, tok, held_out, grader)
    del base

    print(f"\nGRPO with LoRA on {keys['data']} -> {keys['out']}\n", flush=True)
    t0 = time.perf_counter()
    result = train(TrainConfig(**keys))
    minutes = (time.perf_counter() - t0) / 60
    tuned, tuned_tok = models.load(str(result.final))
    after = answer_and_grade(tuned, tuned_tok, held_out, grader)

    for p, (b, rb), (a, ra) in list(zip(held_out, before, after))[:SHOWN]:
        print("\n" + "=" * 100 + f"\n>>> {p['messages'][-1]['content']}   (answer: {p['answer']})")
        print(f"  [base model, reward {rb:.1f}]  {b}\n  [after GRPO, reward {ra:.1f}]  {a}")
    log = [json.loads(ln) for ln in (result.out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(ln) for ln in (result.out / "eval.jsonl").read_text().splitlines()]
    mean = [sum(r for _, r in col) / len(col) for col in (before, after)]
    right = [sum(r >= 0.5 for _, r in col) for col in (before, after)]
    print("\n" + "=" * 100)
    print(f"Held-out sums, greedy answers: mean reward {mean[0]:.3f} before, {mean[1]:.3f} after; the last number "
          f"is the sum in {right[0]} then {right[1]} of {len(held_out)}.")
    print("Mean reward of each step's 32 sampled replies: " + " ".join(f"{r['reward_mean']:.2f}" for r in log))
    print("Validation (one sampled reply per held-out sum): " + "; ".join(
        f"step {e['step']}: mean reward {e['val_reward_mean']:.3f}" for e in evals))
    print(f"Training: {result.step} steps in {minutes:.1f} min, peak memory {result.peak_rss_mb / 1024:.1f} GB")
    print(f"Outputs: {result.final}, {result.out / 'loss.png'} (the reward curve), {result.out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
