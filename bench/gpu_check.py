"""A short CUDA check of the training paths, for a machine with a GPU (not part of CI).

SmolLM2-135M's exact config and tokenizer (bench/smol_config) with random weights, since the
real weights stay on the CPU machine: speed does not depend on the weight values. Trains LoRA and
full fine-tunes in bf16 on the benchmark data, reports tokens/s and peak GPU memory, and checks
that --qlora without bitsandbytes is a clear error. One JSON line per check.

    python bench/gpu_check.py [--steps 30]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build_model(folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(HERE / "smol_config")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(HERE / "smol_config").save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    import torch

    import dataset
    from tailor.errors import TailorError
    from tailor.train import TrainConfig, train

    work = Path(tempfile.mkdtemp())
    build_model(work / "smol")
    dataset.write(str(work / "train.jsonl"), n=320, seed=0)
    dataset.write(str(work / "val.jsonl"), n=32, seed=123)
    base = dict(data=str(work / "train.jsonl"), val=str(work / "val.jsonl"), model=str(work / "smol"),
                max_steps=a.steps, batch_size=8, max_length=512, eval_every=10_000, save_every=10_000,
                eval_samples=0, lora_dropout=0.0)
    for method in ("lora", "full"):
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        r = train(TrainConfig(**base, method=method, out=str(work / method)), quiet=True)
        print(json.dumps({"check": f"train_{method}", "device": torch.cuda.get_device_name() if cuda else "cpu",
                          "steps": r.step, "tokens_per_s": round(r.tokens_per_s, 1),
                          "first_loss": r.losses[0], "last_loss": r.losses[-1], "val": r.val,
                          "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                          "wall_s": round(time.perf_counter() - t, 1), "final": str(r.final)}), flush=True)
    try:
        train(TrainConfig(**base, method="lora", qlora=True, out=str(work / "q")), quiet=True)
        print(json.dumps({"check": "qlora", "result": "trained (bitsandbytes present)"}))
    except TailorError as exc:
        print(json.dumps({"check": "qlora", "result": "clear error", "message": str(exc)}))


if __name__ == "__main__":
    main()
