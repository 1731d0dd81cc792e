"""Multi-GPU check of distributed training (issue 12), for a machine with several GPUs (not CI).

SmolLM2-135M's config and tokenizer (bench/smol_config) with random weights, as in gpu_check.py.
Three checks, one JSON line each (and a summary line):

  scaling   LoRA, DDP, the same global batch at 1, 2 and N GPUs: tokens/s of the whole job, the
            scaling efficiency (tokens/s at N / (N x tokens/s at 1)), and the loss curve's largest
            difference from the 1-GPU run (the same maths: equal up to bf16 rounding).
  memory    a full fine-tune of a model that needs sharding (smol scaled by --big-scale: 4 gives
            ~1.8B parameters, ~29 GB of fp32 weights, gradients and Adam state) under DDP and FSDP2
            at N GPUs: the peak GPU memory of each rank, and the loss curves of the two.

Each run is `tailor train` launched by torchrun through a small driver that records its rank's
peak memory when it exits.

    python bench/multi_gpu.py                                   # every GPU of this machine
    python bench/multi_gpu.py --nproc 4 --steps 20
    python bench/multi_gpu.py --device cpu --nproc 2 --steps 2 --layers 2 --max-length 64 --big-scale 1   # smoke
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DRIVER = textwrap.dedent("""
    import atexit, json, os, sys
    import torch

    def _peak():  # this rank's peak memory, in a file named by its rank
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        path = os.path.join(os.environ["BENCH_PEAKS"], f"rank{os.environ.get('RANK', '0')}.json")
        with open(path, "w") as f:
            json.dump({"peak_mb": round(peak / 2**20)}, f)

    atexit.register(_peak)
    from tailor.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def build_model(folder: Path, *, scale: int, layers: int | None) -> int:
    """smol with hidden size and heads x `scale` (head_dim stays 64); returns its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(HERE / "smol_config")
    cfg.hidden_size *= scale
    cfg.intermediate_size *= scale
    cfg.num_attention_heads *= scale
    cfg.num_key_value_heads *= scale
    if layers:
        cfg.num_hidden_layers = layers
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(HERE / "smol_config").save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run(work: Path, name: str, keys: dict, nproc: int) -> dict:
    """One `tailor train` under torchrun; its losses, tokens/s (steps after the first) and peaks."""
    out, peaks = work / name, work / f"{name}-peaks"
    peaks.mkdir()
    (work / f"{name}.yaml").write_text(yaml.safe_dump({**keys, "out": str(out)}))
    (work / "driver.py").write_text(DRIVER)
    env = {**os.environ, "BENCH_PEAKS": str(peaks), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(work / "driver.py"), "train", str(work / f"{name}.yaml"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        # tailor's own message comes before torchrun's traceback
        return {"run": name, "nproc": nproc, "failed": proc.stderr.split("Traceback (most recent")[0][-1500:]}
    log = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in log[1:]] or [r["tokens_per_s"] for r in log]
    return {"run": name, "nproc": nproc, "losses": [r["loss"] for r in log],
            "tokens_per_s": round(sum(rates) / len(rates), 1),
            "peak_mb_per_rank": [json.loads(p.read_text())["peak_mb"] for p in sorted(peaks.glob("rank*.json"))]}


def max_diff(a: list, b: list) -> float | None:
    return max(abs(x - y) for x, y in zip(a, b)) if a and b and len(a) == len(b) else None


def scaling(work: Path, base: dict, worlds: list[int], global_batch: int) -> list[dict]:
    """LoRA under DDP with the same global batch at each world size."""
    runs = []
    for n in worlds:
        r = run(work, f"lora-{n}", {**base, "batch_size": global_batch // n, "nproc": 1}, n)
        if "losses" in r and runs and "losses" in runs[0]:
            r["efficiency"] = round(r["tokens_per_s"] / (n * runs[0]["tokens_per_s"]), 3)
            r["max_loss_diff_vs_1"] = max_diff(r["losses"], runs[0]["losses"])
        runs.append(r)
        print(json.dumps({"check": "scaling", **{k: v for k, v in r.items() if k != "losses"}}), flush=True)
    return runs


def memory(work: Path, base: dict, n: int, global_batch: int, params: int) -> list[dict]:
    """A full fine-tune of the big model under DDP, then FSDP2, at n processes."""
    runs = []
    for parallel in ("ddp", "fsdp"):
        keys = {**base, "model": str(work / "big"), "method": "full", "parallel": parallel,
                "batch_size": max(1, global_batch // n)}
        r = run(work, f"full-{parallel}", keys, n)
        r["parameters"] = params
        runs.append(r)
        print(json.dumps({"check": "memory", "parallel": parallel, **{k: v for k, v in r.items() if k != "losses"}}),
              flush=True)
    if all("losses" in r for r in runs):
        diff = max_diff(runs[0]["losses"], runs[1]["losses"])
        print(json.dumps({"check": "ddp_vs_fsdp_losses", "max_loss_diff": diff}), flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--nproc", type=int, default=None, help="N (default: every GPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--big-scale", type=int, default=4, help="width multiple of smol for the sharding check")
    ap.add_argument("--layers", type=int, default=None, help="fewer decoder layers (smoke runs)")
    a = ap.parse_args()

    import torch

    import dataset

    n = a.nproc or (torch.cuda.device_count() if a.device == "cuda" else 2)
    if a.device == "cuda" and torch.cuda.device_count() < n:
        sys.exit(f"{n} GPUs asked for, {torch.cuda.device_count()} here")
    work = Path(tempfile.mkdtemp(prefix="multi-gpu-"))
    build_model(work / "smol", scale=1, layers=a.layers)
    params = build_model(work / "big", scale=a.big_scale, layers=a.layers)
    dataset.write(str(work / "train.jsonl"), n=max(64, a.steps * a.global_batch), seed=0)
    base = dict(data=str(work / "train.jsonl"), model=str(work / "smol"), device=a.device, max_steps=a.steps,
                max_length=a.max_length, eval_every=10_000, save_every=10_000, eval_samples=0, val_split=0.0,
                lora_dropout=0.0, schedule="constant", warmup=0, truncate=True,
                dtype="float32" if a.device == "cpu" else "auto")
    worlds = sorted({1, min(2, n), n})
    scale = scaling(work, base, worlds, a.global_batch)
    mem = memory(work, base, n, a.global_batch, params)
    print(json.dumps({"check": "summary", "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
                      "nproc": n, "tokens_per_s": {r["nproc"]: r.get("tokens_per_s") for r in scale},
                      "peak_mb_per_rank": {r["run"]: r.get("peak_mb_per_rank") for r in mem}, "work": str(work)}),
          flush=True)


if __name__ == "__main__":
    main()
