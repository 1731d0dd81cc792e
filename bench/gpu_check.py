"""A short CUDA check of the training paths, for a machine with a GPU (not part of CI).

SmolLM2-135M's exact config and tokenizer (bench/smol_config) with random weights, since the
real weights stay on the CPU machine: speed does not depend on the weight values. Trains LoRA and
full fine-tunes in bf16 on the benchmark data and reports tokens/s and peak GPU memory, with the
fit-to-memory estimate (train/memory.py) beside the measured peak; trains LoRA in fp16 with loss
scaling (forced, on a bf16 GPU too) against bf16 on the same data; and trains, reloads and
generates with --qlora (or checks its clear error without bitsandbytes). One JSON line per check.

    python bench/gpu_check.py [--steps 30]
    python bench/gpu_check.py --steps 2 --batch-size 2 --max-length 128   # a smoke run on CPU
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


# fp16 with loss scaling vs bf16, LoRA on the same data and seed: the mean loss of the last third
# of the steps may differ by this much (both round differently from fp32; fp16 has 3 more mantissa
# bits but may skip early steps while the loss scale settles).
FP16_TOLERANCE = 0.05
# The measured peak may exceed the fit-to-memory estimate by this fraction before the check fails.
PEAK_MARGIN = 0.10


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    a = ap.parse_args()

    import dataset

    work = Path(tempfile.mkdtemp())
    build_model(work / "smol")
    dataset.write(str(work / "train.jsonl"), n=320, seed=0)
    dataset.write(str(work / "val.jsonl"), n=32, seed=123)
    base = dict(data=str(work / "train.jsonl"), val=str(work / "val.jsonl"), model=str(work / "smol"),
                max_steps=a.steps, batch_size=a.batch_size, max_length=a.max_length, eval_every=10_000,
                save_every=10_000, eval_samples=0, lora_dropout=0.0)
    runs = {}
    for name, kw in (("lora", {}), ("full", {"method": "full"}), ("lora_fp16", {"dtype": "float16"})):
        runs[name] = timed_run(name, work, {**base, **kw})
    if "lora_fp16" in runs and runs["lora"]["dtype"] == "bfloat16":
        third = max(1, a.steps // 3)
        bf16, fp16 = (sum(runs[k]["losses"][-third:]) / third for k in ("lora", "lora_fp16"))
        print(json.dumps({"check": "fp16_vs_bf16", "bf16_loss": bf16, "fp16_loss": fp16, "diff": abs(bf16 - fp16),
                          "tolerance": FP16_TOLERANCE, "holds": abs(bf16 - fp16) <= FP16_TOLERANCE,
                          "fp16_skipped_steps": runs["lora_fp16"]["skipped_steps"]}), flush=True)
    qlora_check(work, base)


def timed_run(name: str, work: Path, kw: dict) -> dict:
    """Train, print one JSON line (with the fit-to-memory estimate on CUDA), return what it printed."""
    import torch

    from tailor.train import TrainConfig, memory, train
    from tailor.train.setup import precision

    cfg = TrainConfig(**kw, out=str(work / name))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    r = train(cfg, quiet=True)
    prec = precision(cfg)
    records = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    line = {"check": f"train_{name}", "device": torch.cuda.get_device_name() if cuda else "cpu",
            "dtype": str(prec.compute).replace("torch.", ""), "steps": r.step,
            "tokens_per_s": round(r.tokens_per_s, 1), "first_loss": r.losses[0], "last_loss": r.losses[-1],
            "val": r.val, "skipped_steps": records[-1].get("skipped_steps", 0),
            "wall_s": round(time.perf_counter() - t, 1), "final": str(r.final)}
    if cuda:  # the plan's estimate for the run as given (the run itself may have been re-planned)
        peak = torch.cuda.max_memory_allocated()
        run = memory.Run(method=cfg.method, qlora=cfg.qlora, compute_bytes=prec.compute.itemsize,
                         rows=cfg.batch_size, max_length=cfg.max_length, grad_accum=cfg.grad_accum,
                         checkpointing=cfg.gradient_checkpointing)
        estimate = memory.estimate(memory.shape_of(cfg), run)
        line.update(peak_gpu_mb=round(peak / 2**20), estimate_mb=round(estimate / 2**20),
                    estimate_holds=peak <= estimate * (1 + PEAK_MARGIN))
    print(json.dumps(line), flush=True)
    return {**line, "losses": r.losses}


def qlora_check(work: Path, base: dict) -> None:
    """QLoRA end to end: train, reload the adapter on its 4-bit-free base, generate."""
    from tailor.commands.talk import TalkConfig, load_for_talk, sampling
    from tailor.errors import TailorError
    from tailor.infer.chat import stream_reply

    try:
        line = timed_run("qlora", work, {**base, "qlora": True})
    except TailorError as exc:
        print(json.dumps({"check": "qlora", "result": "clear error", "message": str(exc)}), flush=True)
        return
    cfg = TalkConfig(model=line["final"], temperature=0.0, max_new_tokens=16)
    loaded, _ = load_for_talk(cfg)
    reply = "".join(stream_reply(loaded, [{"role": "user", "content": "What is 2 plus 3?"}], sampling(cfg)))
    print(json.dumps({"check": "qlora_reload_generate", "reply": reply, "ok": bool(reply.strip())}), flush=True)


if __name__ == "__main__":
    main()
