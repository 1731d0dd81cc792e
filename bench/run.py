"""`make bench`: tailor against its peers, side by side, in one run on this machine.

1. Training vs TRL's SFTTrainer (LoRA r16 all-linear, and full): same model, data, loss, batch,
   max length, lr and schedule, same optimizer steps and threads; each tool in its own process,
   alternating TRL, tailor, TRL, tailor, ... for --rounds rounds, warm-up step not timed.
2. Generation: tailor's engine vs HF `model.generate` at batch 1; the server at 1, 4, 8 clients.
3. Data: `tailor data check` + rendering vs TRL's dataset preparation, examples/s.
4. Service: chat latency idle vs while a fine-tuning job trains, and job create -> first token of
   the fine-tuned model on examples/pirate.jsonl (bench/service_latency.py).
Every ratio compares figures measured in this same run. Results: bench/RESULTS.md and a table.

    .venv/bin/python bench/run.py [--rounds 2] [--steps 8] [--only train,generate,data,service]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
PY = sys.executable


def run_json(script: str, *args: str, env: dict | None = None, timeout: int = 1800) -> dict:
    """Run a bench script in its own process; its last stdout line is its JSON result."""
    t = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    for k in [k for k, v in full_env.items() if v is None]:  # None removes a variable
        del full_env[k]
    r = subprocess.run([PY, str(HERE / script), *args], cwd=HERE, capture_output=True, text=True,
                       env=full_env, timeout=timeout)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-5000:])
        raise SystemExit(f"bench: {script} {' '.join(args)} failed (exit {r.returncode})")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1])
    print(f"  {script} {' '.join(a for a in args if not a.startswith('/'))[:70]} -> {time.perf_counter() - t:.0f}s",
          flush=True)
    return result


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads()}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------------------------------------


def bench_train(model: str, rounds: int, steps: int) -> list[dict]:
    data, val = str(WORK / "train.jsonl"), str(WORK / "val.jsonl")
    rows = []
    for method, lr in (("lora", "2e-4"), ("full", "2e-5")):
        common = ["--model", model, "--data", data, "--val", val, "--method", method, "--steps", str(steps),
                  "--batch-size", "4", "--grad-accum", "2", "--lr", lr, "--max-length", "512"]
        for r in range(rounds):
            print(f"training {method}, round {r + 1}/{rounds}", flush=True)
            if r == 0:  # the peer once more without tailor's process-level setting, for the record
                rows.append({**run_json("peer_trl.py", *common, env={"OMP_WAIT_POLICY": None}), "round": r,
                             "tool": "trl-default-omp"})
            rows.append({**run_json("peer_trl.py", *common), "round": r})
            rows.append({**run_json("run_tailor_train.py", *common), "round": r})
    return rows


def summarize_train(rows: list[dict], peak: dict, n_params: int) -> list[list[str]]:
    table = []
    for method in ("lora", "full"):
        by = {tool: [r for r in rows if r["method"] == method and r["tool"] == tool] for tool in ("trl", "tailor")}
        if not by["trl"] or not by["tailor"]:
            continue
        # model FLOPs per token: 2N forward + 2N backward through activations (+2N weight grads for full)
        flops_tok = (6 if method == "full" else 4) * n_params
        figs = {}
        for tool, rs in by.items():
            tps = mean([r["tokens_per_s"] for r in rs])
            figs[tool] = {
                "tokens/s": tps,
                "trained tokens/s": mean([r["trained_tokens_per_s"] for r in rs]),
                "peak RSS (MB)": mean([r["peak_rss_mb"] for r in rs]),
                f"held-out loss after {rs[0]['steps'] + 1} steps": mean([r["val_loss"] for r in rs]),
                "MFU vs bf16 peak": tps * flops_tok / (peak["bf16_tflops"] * 1e12),
                "MFU vs fp32 peak": tps * flops_tok / (peak["fp32_tflops"] * 1e12),
            }
        plain = [r for r in rows if r["method"] == method and r["tool"] == "trl-default-omp"]
        if plain:
            table.append([method, "TRL tokens/s without OMP_WAIT_POLICY=PASSIVE", f"{plain[0]['tokens_per_s']:,.4g}",
                          "", ""])
        for k in figs["trl"]:
            a, b = figs["tailor"][k], figs["trl"][k]
            fmt = (lambda v: f"{v:.1%}") if "MFU" in k else (lambda v: f"{v:,.4g}" if v is not None else "n/a")
            table.append([method, k, fmt(b), fmt(a), ratio(a, b)])
    return table


def bench_generate(model: str) -> dict:
    hf = run_json("peer_hf_generate.py", "--model", model, "--dtype", "bfloat16")
    ours = run_json("run_tailor_generate.py", "--model", model, "--dtype", "bfloat16")
    serve = run_json("run_tailor_serve.py", "--model", model, timeout=1200)
    llama = {}  # llama.cpp, what users would run instead for local inference (the `gguf` extra)
    if importlib.util.find_spec("llama_cpp") is not None:
        llama = {q: run_json("peer_llama_cpp.py", "--model", model, "--quant", q) for q in ("f16", "q8_0")}
    return {"hf": hf, "tailor": ours, "serve": serve, "llama_cpp": llama}


def bench_data(model: str) -> dict:
    data = str(WORK / "data20k.jsonl")
    trl = run_json("peer_trl_data.py", "--model", model, "--data", data)
    ours = run_json("run_tailor_data.py", "--model", model, "--data", data)
    return {"trl": trl, "tailor": ours}


def write_results(info: dict, peak: dict, train_table, gen, data, args, service=None) -> str:
    lines = [
        "# tailor benchmark results",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']}, "
        f"{info['threads']} torch threads; {info['date']}. Command: `make bench` "
        f"(rounds={args.rounds}, timed steps={args.steps} after 1 warm-up).",
        f"Measured matmul peak (torch.mm 2048^3): bf16 {peak['bf16_tflops']:.2f} TFLOP/s, "
        f"fp32 {peak['fp32_tflops']:.2f} TFLOP/s.",
        "",
    ]
    if train_table:
        lines += ["## Training: tailor vs TRL SFTTrainer (SmolLM2-135M-Instruct, max length 512, batch 4 x accum 2)",
                  "", "| method | figure | TRL | tailor | tailor/TRL |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in train_table]
        lines += ["", "Same for both: model, data (bench/dataset.py, 320 examples, ~43% assistant tokens), assistant-only "
                  "loss (masks checked identical by bench/check_masks.py), LoRA r16/alpha32/all-linear/dropout 0, "
                  "AdamW, cosine schedule, no warm-up, clip 1.0, seed 0, 2 threads, OMP_WAIT_POLICY=PASSIVE. "
                  "Different, by each tool's default: TRL trains in fp32 (its CPU default), tailor runs bf16 "
                  "matmuls with fp32 master weights and optimizer state (its default on AMX CPUs); TRL pads each "
                  "micro-batch of randomly ordered examples, tailor groups examples of similar length. Both models "
                  "are scored after training by the same function (bench/common.py heldout_loss, fp32, 32 held-out "
                  "examples), so the loss column compares equal steps and an equal number of examples.",
                  "", "Per-round raw numbers are in bench/.work/train_rows.json.", ""]
    if gen:
        hf, ours, serve = gen["hf"], gen["tailor"], gen["serve"]
        lines += ["## Generation (bf16, greedy, 50-token prompt, 64 new tokens)", "",
                  "| figure | HF generate | tailor | ratio |", "|---|---|---|---|",
                  f"| batch-1 decode tokens/s | {hf['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
                  f"{ratio(ours['tokens_per_s'], hf['tokens_per_s'])} |", ""]
        if gen.get("llama_cpp"):  # the same prompt and decode, through `tailor export` and llama-cpp-python
            lines += ["| batch-1 decode tokens/s | llama.cpp (2 threads) | tailor bf16 | tailor/llama.cpp |",
                      "|---|---|---|---|"]
            lines += [f"| {q} GGUF | {peer['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
                      f"{ratio(ours['tokens_per_s'], peer['tokens_per_s'])} |" for q, peer in gen["llama_cpp"].items()]
            lines += [""]
        lines += ["| server clients | total tokens/s | vs 1 client |", "|---|---|---|"]
        base = serve["clients"]["1"]
        lines += [f"| {c} | {v:.1f} | {ratio(v, base)} |" for c, v in serve["clients"].items()]
        lines += [""]
    if data:
        lines += ["## Data preparation (20,000 chat examples, SmolLM2 template, assistant masks, no cache)", "",
                  "| figure | TRL | tailor | tailor/TRL |", "|---|---|---|---|",
                  f"| examples/s | {data['trl']['examples_per_s']:,.0f} | {data['tailor']['examples_per_s']:,.0f} | "
                  f"{ratio(data['tailor']['examples_per_s'], data['trl']['examples_per_s'])} |", ""]
    if service:
        lines += ["## Fine-tuning service (`tailor serve`, default model, bench/service_latency.py)", "",
                  "```", service["table"], "```", ""]
    notes = HERE / "ANALYSIS.md"
    if notes.is_file():
        lines += [notes.read_text()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", default="train,generate,data,service")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    parts = set(args.only.split(","))
    WORK.mkdir(exist_ok=True)
    # tailor's CLI sets OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning while
    # waiting); every process here gets it, the peers too, and TRL also runs once without it.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.path.insert(0, str(HERE))
    import dataset

    from tailor import models

    model = str(models.local_folder(None))
    dataset.write(str(WORK / "train.jsonl"), n=320, seed=0)
    dataset.write(str(WORK / "val.jsonl"), n=32, seed=123)
    dataset.write(str(WORK / "data20k.jsonl"), n=20000, seed=1)
    info = machine()
    peak = run_json("peak.py")
    print(f"machine: {info}\npeak: {peak}", flush=True)
    run_json("check_masks.py", "--model", model, "--data", str(WORK / "train.jsonl"))

    train_table = gen = data = None
    if "train" in parts:
        rows = bench_train(model, args.rounds, args.steps)
        (WORK / "train_rows.json").write_text(json.dumps(rows, indent=1))
        from safetensors import safe_open

        with safe_open(str(Path(model) / "model.safetensors"), "pt") as f:
            n_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
        train_table = summarize_train(rows, peak, n_params)
    if "generate" in parts:
        gen = bench_generate(model)
    if "data" in parts:
        data = bench_data(model)
    service = None
    if "service" in parts:
        service = run_json("service_latency.py", "--model", model, timeout=3600)
        from service_latency import table  # bench/ is on sys.path (see `import dataset`)

        service["table"] = table(service)
    text = write_results(info, peak, train_table, gen, data, args, service)
    Path(args.out).write_text(text + "\n")
    print("\n" + text)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main()
