"""tailor's side of the DPO benchmark, with the same arguments as peer_trl_dpo.py. One JSON line.

Throughput comes from tailor's metrics.jsonl (training compute only, as TRL's timer counts
steps), leaving out the first optimizer step as the warm-up. The reference log-probs are
tailor's default (--dpo-reference cached: one pass before training, like TRL's precompute); the
pass is not in the timed steps for either tool, and is in both tools' time to first step.
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
    ap.add_argument("--val", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--method", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--dtype", default="auto")
    a = ap.parse_args()

    from common import heldout_dpo_loss, pair_logps
    from run_tailor_train import watch_first_step

    from tailor import models
    from tailor.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(prefix="tailor-dpo-bench-"))
    first = watch_first_step(out / "metrics.jsonl")
    cfg = TrainConfig(data=a.data, model=a.model, method=a.method, objective="dpo", beta=a.beta, out=str(out),
                      max_steps=a.steps + 1, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
                      max_length=a.max_length, warmup=0, schedule="constant", weight_decay=0.0, max_grad_norm=1.0,
                      lora_r=16, lora_alpha=32, lora_dropout=0.0, seed=0, val_split=0, eval_every=10_000,
                      save_every=10_000, eval_samples=0, dtype=a.dtype)
    result = train(cfg, quiet=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > 1]  # step 1 is the warm-up
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    tokens, trained = sum(r["tokens"] for r in rows), sum(r["trained_tokens"] for r in rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the scoring below
    model, tok = models.load(str(result.final), dtype="float32")
    scores = heldout_dpo_loss(pair_logps(model, tok, a.val), json.load(open(a.reference)), a.beta)
    print(json.dumps({
        "tool": "tailor", "method": a.method, "steps": a.steps, "seconds": seconds, "tokens": tokens,
        "trained_tokens": trained, "tokens_per_s": tokens / seconds, "trained_tokens_per_s": trained / seconds,
        "peak_rss_mb": peak, "losses": result.losses, "first_step_s": first.get("s"), **scores,
    }))


if __name__ == "__main__":
    main()
