"""tailor's side of the training benchmark, with the same arguments as peer_trl.py. One JSON line.

Throughput comes from tailor's own metrics.jsonl (training compute only, as TRL's timer counts
steps), leaving out the first optimizer step as the warm-up, like the TRL run. Time to first
step: from this process's start until metrics.jsonl holds step 1 (watched by a thread)."""

import argparse
import json
import resource
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--method", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    a = ap.parse_args()

    from common import heldout_loss

    from tailor import models
    from tailor.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(prefix="tailor-bench-"))
    first = watch_first_step(out / "metrics.jsonl")
    cfg = TrainConfig(data=a.data, val=a.val, model=a.model, method=a.method, out=str(out),
                      max_steps=a.steps + 1, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
                      max_length=a.max_length, warmup=0, schedule=a.schedule, weight_decay=0.0,
                      max_grad_norm=1.0, lora_r=16, lora_alpha=32, lora_dropout=0.0, seed=0,
                      eval_every=10_000, save_every=10_000, eval_samples=0, dtype=a.dtype)
    result = train(cfg, quiet=True)
    # after the last step: final evaluation, checkpoint, final/ and loss.png (what a user waits for)
    finish_s = time.time() - (out / "metrics.jsonl").stat().st_mtime
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r and r["step"] > 1]  # step 1 is the warm-up
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    trained = sum(r["trained_tokens"] for r in rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the scoring below
    model, tok = models.load(str(result.final), dtype="float32")
    val_loss = heldout_loss(model, tok, a.val)
    print(json.dumps({
        "tool": "tailor", "method": a.method, "steps": a.steps, "seconds": seconds, "tokens": tokens,
        "trained_tokens": trained, "tokens_per_s": tokens / seconds, "trained_tokens_per_s": trained / seconds,
        "peak_rss_mb": peak, "losses": result.losses, "val_loss": val_loss, "dtype": a.dtype,
        "first_step_s": first.get("s"), "finish_s": finish_s, "compute_dtype": compute_dtype(cfg),
    }))


def compute_dtype(cfg) -> str | None:
    """The dtype tailor's matmuls ran in (what --dtype auto chose here), from its own precision pick."""
    try:
        from tailor.train.config import resolve
        from tailor.train.setup import precision

        return str(precision(resolve(cfg)).compute)
    except Exception as e:  # an internal API; the bench still reports everything else
        return f"unknown ({type(e).__name__})"


def watch_first_step(path: Path) -> dict:
    """A daemon thread that notes process_age() when `path` first holds step 1's record (the
    trainer writes it right after that step, before the next one starts)."""
    import psutil  # noqa: F401  (imported now, not when step 1 ends)
    from common import process_age

    seen: dict = {}

    def watch() -> None:
        while True:
            try:
                if '"step": 1,' in path.read_text():  # metrics.jsonl lines start {"step": N, ...
                    seen["s"] = process_age()
                    return
            except OSError:
                pass
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return seen


if __name__ == "__main__":
    main()
