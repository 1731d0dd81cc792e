"""`make bench`: tailor against each peer at the peer's best configuration, in one run on this machine.

1. Training vs TRL's SFTTrainer with bf16=True (its best CPU configuration; fp32 as a second row):
   learnable chats (bench/dataset.py), short (~150 tokens) and long (~1,000), batch 4 and batch
   16 (micro-batch 4 x accumulation 4), LoRA and full. Same model, data, order of examples
   (bench/common.py tailor_order), loss, micro-batch, lr, schedule, steps and threads; each tool in
   its own process, TRL then tailor, for --rounds rounds; the first step is a warm-up and is not
   timed. Both trained models and the base model are scored on held-out questions by one function.
2. Figures users feel: time to the first training step (process start to step 1 done, in every
   training run), the wall time of `make demo`'s training (bench/demo_train.py), peak RSS.
3. Decode at batch 1: tailor (`--dtype auto`: the precision its engine measured on this CPU) vs
   HF `generate` (fp32 and bf16; the faster is the peer) vs llama.cpp (f16, q8_0), --rounds
   rounds. With --tailor-generate-flags (or when `tailor generate --help` offers --quantize) tailor
   gets a second row with those engine flags. Decode runs with OMP_WAIT_POLICY=ACTIVE for every
   tool (as `tailor generate` sets it), training and serving with PASSIVE (as `tailor train` and
   `serve` do). Serving: `tailor serve` and llama-cpp-python's server on the same f16 GGUF,
   streaming chat at 1/4/8/16 clients (bench/serve_load.py).
4. Data preparation and the fine-tuning service (as before), one round each.
5. Structured outputs: decode tokens/s with and without a JSON schema's grammar at batch 1 and 8
   (bench/structured_speed.py; target: at most 10% slower).
6. DPO vs TRL's DPOTrainer in its best CPU configuration (bf16, reference log-probs precomputed),
   LoRA and full, the same pairs in the same order, alternating for --rounds rounds: tokens/s,
   peak RSS, and the held-out preference loss (both scored against the base model's log-probs).
7. GRPO vs TRL's GRPOTrainer in its best CPU configuration (transformers generation, bf16), the
   same task (bench/grpo_task.py), prompts, replies per prompt and lengths, alternating for --rounds
   rounds: rollout tokens/s, step time, and the mean reward over the steps.
Every ratio compares figures measured in this same run, on this machine: the run records its CPU
(model, kind, flags) and becomes that CPU kind's latest in bench/results/; bench/RESULTS.md shows
each kind's latest side by side (the previous RESULTS.md moves to the top of bench/HISTORY.md).
Raw figures: bench/.work/rows.json. Training configs print their model FLOPs utilisation.

    .venv/bin/python bench/run.py [--rounds 2] [--only train,demo,generate,data,service,structured,dpo,grpo] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import plan as bench_plan
import results
import targets

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
PY = sys.executable
PARTS = "train,demo,generate,data,service,structured,dpo,grpo"


def run_json(script: str, *args: str, env: dict | None = None, timeout: int = 1800, optional: bool = False) -> dict:
    """Run a bench script in its own process; its last stdout line that is JSON is its result.
    A failure ends the bench, or with optional=True returns {"error": ...} and the bench goes on."""
    t = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run([PY, str(HERE / script), *args], cwd=HERE, capture_output=True, text=True,
                       env=full_env, timeout=timeout)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-5000:])
        if optional:
            print(f"  {script}: failed (exit {r.returncode}); going on without it", flush=True)
            return {"error": (r.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        raise SystemExit(f"bench: {script} {' '.join(args)} failed (exit {r.returncode})")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1])
    shown = " ".join(a for a in args if not a.startswith("/"))[:80]
    print(f"  {script} {shown} -> {time.perf_counter() - t:.0f}s", flush=True)
    return {**result, "wall_s": time.perf_counter() - t}


def write_data(quick: bool) -> dict:
    """The bench's files, deterministic; sizes are multiples of 16 (no short micro-batch)."""
    import dataset

    n = bench_plan.DATA_SIZES["quick" if quick else "full"]
    files = {}
    for shape in ("short", "long"):
        for split in ("train", "val"):
            path = WORK / f"{shape}-{split}.jsonl"
            dataset.write(str(path), n=n[shape][split], seed=0, shape=shape, split=split)
            files[f"{shape}-{split}"] = str(path)
    path = WORK / "data20k.jsonl"
    dataset.write(str(path), n=20000, seed=1)
    files["data20k"] = str(path)
    return files


def bench_train(model: dict, files: dict, configs: list[dict], rounds: int, found: dict) -> tuple[list[dict], dict]:
    """TRL then tailor per config and round; `found` (the run's figures so far: the peak and the
    model's shape) gives each run's model FLOPs utilisation as it finishes. `model`: the folder
    per method, as `tailor train --model default` picks it (see main)."""
    base = {shape: run_json("score.py", "--model", model["lora"], "--val", files[f"{shape}-val"])["val_loss"]
            for shape in sorted({c["shape"] for c in configs})}
    print(f"base model held-out loss: {base}", flush=True)
    rows = []
    for r in range(rounds):
        for c in configs:
            if r >= c["rounds"]:
                continue
            print(f"training {c['name']}, round {r + 1}/{min(rounds, c['rounds'])}", flush=True)
            args = ["--model", model[c["method"]], "--data", files[f"{c['shape']}-train"], "--val", files[f"{c['shape']}-val"],
                    "--method", c["method"], "--steps", str(c["steps"]), "--batch-size", str(c["batch"]),
                    "--grad-accum", str(c["accum"]), "--lr", c["lr"], "--schedule", "constant",
                    "--max-length", str(c["max_length"])]
            tag = {"config": c["name"], "round": r, "shape": c["shape"], "batch": c["batch"] * c["accum"]}
            got = [run_json("peer_trl.py", *args, "--bf16", "--tailor-order"), run_json("run_tailor_train.py", *args)]
            if r == 0 and c.get("fp32_peer"):  # TRL's default precision, a second row
                got.append(run_json("peer_trl.py", *args, "--tailor-order"))
            rows += [{**g, **tag} for g in got]
            print("    " + "  ".join(f"{g['tool']}: {g['tokens_per_s']:.0f} tok/s "
                                     f"(MFU {targets.fmt(targets.mfu(found, c, g['tokens_per_s']), '.0%')}), "
                                     f"loss {g['val_loss']:.3f}, first step {results._fmt(g['first_step_s'], '.1f')}s"
                                     for g in got), flush=True)
    return rows, base


def bench_dpo(model: dict, configs: list[dict], rounds: int, quick: bool) -> list[dict]:
    import dpo_data

    sizes = bench_plan.DPO_SIZES["quick" if quick else "full"]
    train, val, ref = WORK / "dpo-train.jsonl", WORK / "dpo-val.jsonl", WORK / "dpo-reference.json"
    dpo_data.write(str(train), n=sizes["train"], split="train")
    dpo_data.write(str(val), n=sizes["val"], split="val")
    run_json("dpo_reference.py", "--model", model["lora"], "--val", str(val), "--out", str(ref))
    rows = []
    for r in range(rounds):
        for c in configs:
            if r >= c["rounds"]:
                continue
            print(f"DPO {c['name']}, round {r + 1}/{min(rounds, c['rounds'])}", flush=True)
            args = ["--model", model[c["method"]], "--data", str(train), "--val", str(val), "--reference", str(ref),
                    "--method", c["method"], "--steps", str(c["steps"]), "--batch-size", str(c["batch"]),
                    "--grad-accum", str(c["accum"]), "--lr", c["lr"]]
            got = [run_json("peer_trl_dpo.py", *args, "--bf16"), run_json("run_tailor_dpo.py", *args)]
            rows += [{**g, "config": c["name"], "round": r} for g in got]
            print("    " + "  ".join(f"{g['tool']}: {g['tokens_per_s']:.0f} tok/s, held-out DPO loss "
                                     f"{g['val_dpo_loss']:.4f}, peak {g['peak_rss_mb']:,.0f} MB" for g in got), flush=True)
    return rows


def bench_grpo(model: str, configs: list[dict], rounds: int) -> list[dict]:
    import grpo_task

    train = WORK / "grpo-train.jsonl"
    grpo_task.write(str(train), str(WORK / "grpo-val.jsonl"))
    rows = []
    for r in range(rounds):
        for c in configs:
            if r >= c["rounds"]:
                continue
            print(f"GRPO {c['name']}, round {r + 1}/{min(rounds, c['rounds'])}", flush=True)
            args = ["--model", model, "--data", str(train), "--method", c["method"], "--steps", str(c["steps"]),
                    "--prompts", str(c["prompts"]), "--generations", str(c["generations"]),
                    "--max-completion-tokens", str(c["tokens"]), "--lr", c["lr"], "--seed", str(r)]
            got = [run_json("peer_trl_grpo.py", *args, "--bf16", timeout=7200), run_json("run_tailor_grpo.py", *args)]
            rows += [{**g, "config": c["name"], "round": r} for g in got]
            print("    " + "  ".join(f"{g['tool']}: {g['step_s']:.1f} s/step, rollout {g['rollout_tokens_per_s']:.0f} "
                                     f"tok/s, mean reward {sum(g['rewards']) / len(g['rewards']):.3f}" for g in got),
                  flush=True)
    return rows


def tailor_generate_flags(given: str | None) -> list[str] | None:
    """Flags for tailor's second decode row: as given, or --quantize int8 when tailor has it."""
    if given is not None:
        return given.split() or None
    helptext = subprocess.run([str(Path(PY).parent / "tailor"), "generate", "--help"], capture_output=True,
                              text=True).stdout
    return ["--quantize", "int8"] if "--quantize" in helptext else None


def bench_generate(model: str, rounds: int, flags: list[str] | None, quick: bool) -> dict:
    import importlib.util

    has_llama = importlib.util.find_spec("llama_cpp") is not None
    for old in WORK.glob("llama-cpp-*.gguf"):  # exported afresh by this run's tailor
        old.unlink()
    out: dict = {"hf-fp32": [], "hf-bf16": [], "tailor": [], "tailor-flags": [], "llama-f16": [], "llama-q8_0": [],
                 "flags": " ".join(flags or [])}
    # batch-1 decode runs as `tailor generate` runs it, with spinning OpenMP threads (tailor/cli.py
    # omp_wait_policy: 1.4x here); every decode peer gets the same, the servers sleep as `tailor serve` does
    spin = {"OMP_WAIT_POLICY": "ACTIVE"}
    for r in range(rounds):
        print(f"decode, round {r + 1}/{rounds}", flush=True)
        for dtype in ("float32", "bfloat16"):
            out[f"hf-{dtype.replace('float32', 'fp32').replace('bfloat16', 'bf16')}"].append(
                run_json("peer_hf_generate.py", "--model", model, "--dtype", dtype, env=spin))
        out["tailor"].append(run_json("run_tailor_generate.py", "--model", model, "--dtype", "auto", env=spin))
        if flags:  # a new engine option: its failure costs its row, not the whole bench
            got = run_json("run_tailor_generate.py", "--model", model, "--dtype", "auto", "--", *flags,
                           optional=True, env=spin)
            out["tailor-flags"] += [] if "error" in got else [got]
            out["flags_error"] = got.get("error")
        if has_llama:
            for q in ("f16", "q8_0"):
                out[f"llama-{q}"].append(run_json("peer_llama_cpp.py", "--model", model, "--quant", q, env=spin))
    plan = out["tailor"][-1].get("plan", "?")
    out["tailor_label"] = f"tailor auto ({plan})"
    out["precision"] = out["tailor"][-1].get("precision")
    servers = "tailor,llama-cpp" if importlib.util.find_spec("llama_cpp.server") and _server_extra() else "tailor"
    if servers == "tailor":
        print("  llama-cpp-python's server is not installed (pip install 'llama-cpp-python[server]'): "
              "serving is measured for tailor alone", flush=True)
    load = ["--requests", "1", "--clients", "1,4"] if quick else []
    out["serve"] = run_json("serve_load.py", "--model", model, "--rounds", str(rounds), "--servers", servers, *load,
                            timeout=3600)
    return out


def _server_extra() -> bool:
    """llama_cpp.server imports only with its extra's packages (sse-starlette and others)."""
    r = subprocess.run([PY, "-c", "import llama_cpp.server.app"], capture_output=True)
    return r.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default=None, help=f"comma-separated parts (default: {PARTS}; with --quick: train)")
    ap.add_argument("--configs", default=None, help="training configs by name (default: all in bench/plan.py)")
    ap.add_argument("--quick", action="store_true", help="smoke test: small data, one config, few steps, 1 round")
    ap.add_argument("--tailor-generate-flags", default=None,
                    help="engine flags for a second tailor decode row, e.g. '--quantize int8'")
    ap.add_argument("--out", default=None, help="default: bench/RESULTS.md (--quick: bench/.work/RESULTS-quick.md)")
    args = ap.parse_args()
    parts = set((args.only or ("train" if args.quick else PARTS)).split(","))
    rounds = 1 if args.quick and args.rounds == 2 else args.rounds
    configs = bench_plan.configs(args.quick, args.configs)
    WORK.mkdir(exist_ok=True)
    # tailor's CLI sets OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning while
    # waiting) for training and serving; every such process here gets it, the peers too (batch-1
    # decode, as `tailor generate` runs it, spins: see bench_generate).
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tailor import models

    model = str(models.local_folder(None))
    # what `tailor train --model default` reads, given to both tools: the bf16 conversion for LoRA's
    # frozen base, the exact fp32 one for full fine-tuning (models._storage_dtype says why)
    by_method = {"lora": model, "full": str(models.local_folder(None, exact=True))}
    files = write_data(args.quick)
    print(bench_plan.describe(configs, parts, rounds, args.quick), flush=True)
    t0 = time.perf_counter()
    info = results.machine()
    peak = run_json("peak.py")
    print(f"machine: {results._machine_line(info, peak)}", flush=True)
    for shape in ("short", "long"):
        if any(c["shape"] == shape for c in configs):
            run_json("check_masks.py", "--model", model, "--data", files[f"{shape}-train"],
                     "--max-length", str(bench_plan.MAX_LENGTH[shape]))
    found: dict = {"info": info, "peak": peak, "rounds": rounds, "configs": configs,
                   "n_params": results.n_params(model), "model_shape": results.model_shape(model),
                   "mean_tokens": bench_plan.MEAN_TOKENS}
    if "train" in parts:
        found["train"], found["base_loss"] = bench_train(by_method, files, configs, rounds, found)
    if "demo" in parts:
        found["demo"] = run_json("demo_train.py")
    if "dpo" in parts:
        found["dpo_configs"] = bench_plan.dpo_configs(args.quick)
        found["dpo"] = bench_dpo(by_method, found["dpo_configs"], rounds, args.quick)
    if "grpo" in parts:
        found["grpo_configs"] = bench_plan.grpo_configs(args.quick)
        found["grpo"] = bench_grpo(model, found["grpo_configs"], rounds)
    if "generate" in parts:
        found["generate"] = bench_generate(model, rounds, tailor_generate_flags(args.tailor_generate_flags), args.quick)
    if "data" in parts:
        found["data"] = {tool: run_json(script, "--model", model, "--data", files["data20k"])
                         for tool, script in (("trl", "peer_trl_data.py"), ("tailor", "run_tailor_data.py"))}
    if "service" in parts:
        found["service"] = run_json("service_latency.py", "--model", model, timeout=3600)
        from service_latency import table  # bench/ is on sys.path (this script's folder)

        found["service"]["table"] = table(found["service"])
    if "structured" in parts:
        found["structured"] = run_json("structured_speed.py", "--model", model, *(["--quick"] if args.quick else []))
    found["minutes"] = (time.perf_counter() - t0) / 60
    (WORK / "rows.json").write_text(json.dumps(found, indent=1))
    command = "bench/run.py " + " ".join(sys.argv[1:])
    if args.quick:  # a smoke test is nobody's latest: its own page only
        text = results.render(found, command=command)
    else:
        kept = results.remember(found, parts, command)
        print(f"this run is now the latest on {info['kind']} ({kept})", flush=True)
        text = results.render_page(results.stored())
    out = Path(args.out) if args.out else (WORK / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md")
    results.write(out, text, history=HERE / "HISTORY.md" if out == HERE / "RESULTS.md" else None)
    print("\n" + text + f"\n(bench took {found['minutes']:.1f} min; written to {out})")


if __name__ == "__main__":
    main()
