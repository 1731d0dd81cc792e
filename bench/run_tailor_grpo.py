"""tailor's side of the GRPO benchmark, with the same arguments as peer_trl_grpo.py. One JSON line.

Per step, from tailor's metrics.jsonl: the wall time of the step (rollouts, grading, forward,
backward, optimizer: the loop's timer), the rollout's sampled tokens per second of sampling, and
the mean reward of the step's replies. Step 1 is a warm-up and is not timed (its rewards count).
"""

import argparse
import json
import resource
import tempfile
from pathlib import Path


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
    a = ap.parse_args()

    from grpo_task import GRADER
    from run_tailor_train import watch_first_step

    from tailor.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(prefix="tailor-grpo-bench-"))
    first = watch_first_step(out / "metrics.jsonl")
    cfg = TrainConfig(data=a.data, model=a.model, method=a.method, objective="grpo", grader=str(GRADER), out=str(out),
                      max_steps=a.steps + 1, batch_size=a.prompts, num_generations=a.generations,
                      max_completion_tokens=a.max_completion_tokens, temperature=a.temperature, lr=a.lr, warmup=0,
                      schedule="constant", weight_decay=0.0, max_grad_norm=1.0, lora_r=16, lora_alpha=32,
                      lora_dropout=0.0, seed=a.seed, val_split=0, eval_every=10_000, save_every=10_000, eval_samples=0,
                      max_length=256)
    train(cfg, quiet=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > 1]
    print(json.dumps({
        "tool": "tailor", "method": a.method, "steps": a.steps, "rewards": [r["reward_mean"] for r in rows],
        "step_s": sum(r["tokens"] / r["tokens_per_s"] for r in timed) / len(timed),
        "sampling_s": sum(r["sampling_s"] for r in timed) / len(timed),
        "rollout_tokens_per_s": sum(r["rollout_tokens_per_s"] for r in timed) / len(timed),
        "completion_length": sum(r["completion_length"] for r in timed) / len(timed),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "first_step_s": first.get("s"),
    }))


if __name__ == "__main__":
    main()
