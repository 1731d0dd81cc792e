"""The detail tables of one machine's run (bench/RESULTS.md): training against TRL, model FLOPs
utilisation, batch-1 decode, serving against llama-cpp-python's server, data preparation and
the fine-tuning service."""

from __future__ import annotations

from targets import LEARNED, best_hf, fmt, mfu, rows_of, serve_rounds, tps

SETTINGS = """Same for both tools: model (SmolLM2-135M-Instruct), data (bench/dataset.py: the Lantern & Loom
shop chats; held-out questions are new questions about the same catalogue, in the same formats),
the examples in each micro-batch and their order (TRL reads tailor's order through a sequential
sampler, bench/common.py tailor_order), micro-batch 4 with accumulation 1 or 4, assistant-only
loss (masks checked identical by bench/check_masks.py), LoRA r16/alpha32/all-linear/dropout 0,
AdamW, constant learning rate (LoRA 1e-3, full 5e-5), no warm-up, clip 1.0, seed 0, the same
threads, OMP_WAIT_POLICY=PASSIVE for every process. Both trained models and the base model are
scored by one function (bench/common.py heldout_loss, fp32, one example at a time).

| setting | TRL (peer) | tailor | why |
|---|---|---|---|
| precision | `bf16=True`: autocast bf16 over fp32 weights (headline); fp32 (second row, short batch 4 only) | `--dtype auto`: bf16 matmuls, fp32 master weights and optimizer state | each tool's best CPU configuration; the "dtype seen" column is the dtype of a linear layer's output seen inside each run |
| forward | Hugging Face modules (+ PEFT for LoRA) | tailor's fused Llama forward | each tool's own code path |
| padding | pads each micro-batch to its longest | the same (group batching, no attention mask) | both get tailor's length-grouped order, so TRL also pads little |
| throughput counted | steps 2..N (TrainerCallback timer) | steps 2..N (metrics.jsonl) | the first step is a warm-up for both |
| first step | process start to the end of step 1 (TrainerCallback) | process start to step 1 in metrics.jsonl | both include imports, model load and data preparation; round 2 on is a warm cache |
| peak RSS | ru_maxrss after training, before scoring | the same | |"""


def training(found: dict) -> list[str]:
    base = found.get("base_loss", {})
    lines = ["| config | tool | tokens/s per round | trained tokens/s | peak RSS MB | first step s | "
             "held-out loss (base) | dtype seen |", "|---|---|---|---|---|---|---|---|"]
    for c in found.get("configs", []):
        for tool in ("trl-bf16", "trl-fp32", "tailor"):
            rs = rows_of(found, c["name"], tool)
            if not rs:
                continue

            def col(k, spec, rs=rs):
                return " / ".join(fmt(r.get(k), spec) for r in rs)

            dtype = rs[0].get("activation_dtype") or rs[0].get("compute_dtype") or ""
            lines.append(f"| {c['name']} | {tool} | {col('tokens_per_s', ',.0f')} | {col('trained_tokens_per_s', ',.0f')} | "
                         f"{col('peak_rss_mb', ',.0f')} | {col('first_step_s', '.1f')} | {col('val_loss', '.3f')} "
                         f"({fmt(base.get(c['shape']), '.3f')}) | {dtype.replace('torch.', '')} |")
    learned = [r for r in found.get("train", []) if base.get(r["shape"]) and r.get("val_loss")]
    below = sum(r["val_loss"] <= LEARNED * base[r["shape"]] for r in learned)
    lines += ["", f"Held-out loss at or below {LEARNED:.0%} of the base model's (it learned): {below} of "
              f"{len(learned)} runs."]
    finish = [r["finish_s"] for r in found.get("train", []) if r.get("finish_s") is not None]
    if finish:  # TRL's runs save nothing (save_strategy "no"), so this has no peer column
        lines += [f"tailor after its last step (final evaluation, checkpoint, final/, loss.png): "
                  f"{min(finish):.1f}-{max(finish):.1f} s per run, not counted in tokens/s."]
    return lines


def utilisation(found: dict) -> list[str]:
    """Model FLOPs utilisation per config and tool, against this run's measured bf16 peak."""
    peak = (found.get("peak") or {}).get("bf16_tflops")
    rows = []
    for c in found.get("configs", []):
        for tool in ("trl-bf16", "tailor"):
            got = [mfu(found, c, r["tokens_per_s"]) for r in rows_of(found, c["name"], tool)]
            if any(g is not None for g in got):
                rows.append(f"| {c['name']} | {tool} | {' / '.join(fmt(g, '.1%') for g in got)} |")
    if not rows or not peak:
        return []
    return [f"Model FLOPs utilisation against the measured bf16 matmul peak ({peak:.2f} TFLOP/s): "
            "6N per token for full fine-tuning, 4N for LoRA (no weight gradients for the frozen base), plus "
            "attention (12 x layers x attention width x half the mean example length).", "",
            "| config | tool | MFU per round |", "|---|---|---|", *rows]


def decode(gen: dict) -> list[str]:
    label = gen.get("tailor_label", "tailor")
    lines = ["| batch-1 decode (greedy, 50-token prompt, 64 new tokens) | tokens/s per round |", "|---|---|"]
    names = {"hf-fp32": "HF generate fp32", "hf-bf16": "HF generate bf16", "tailor": f"{label} engine",
             "tailor-flags": f"tailor engine {gen.get('flags', '')}", "llama-f16": "llama.cpp f16 GGUF (2 threads)",
             "llama-q8_0": "llama.cpp q8_0 GGUF (2 threads)"}
    for key, text in names.items():
        if gen.get(key):
            lines.append(f"| {text} | {' / '.join(f'{v:.1f}' for v in tps(gen[key]))} |")
    if gen.get("flags_error"):
        lines.append(f"| tailor engine {gen['flags']} | failed: {gen['flags_error']} |")
    if gen.get("precision"):
        lines += ["", f"tailor's decode precision (`--dtype auto`, measured by the engine at first load): {gen['precision']}"]
    if gen.get("hf-fp32") or gen.get("hf-bf16"):
        lines += ["", f"HF generate's faster dtype in this run: {best_hf(gen)[0].split('-')[1]} (the peer in the targets)."]
    return lines + ["", *serving(gen)]


def serving(gen: dict) -> list[str]:
    ours, peer = serve_rounds(gen), serve_rounds(gen, "llama-cpp")
    if not ours:
        return []
    serve = gen.get("serve") or {}
    head = "| clients | tailor serve tokens/s per round |"
    rule = "|---|---|"
    if peer:
        head += " llama-cpp-python server tokens/s | ratio | TTFT p50 / p95, tailor | TTFT p50 / p95, llama.cpp |"
        rule += "---|---|---|---|"
    lines = []
    if peer:
        lines += [f"Streaming chat, both servers on the same {serve.get('gguf', '')} GGUF file, "
                  f"{serve.get('requests', '?')} requests per client, {serve.get('max_tokens', '?')} tokens at most "
                  "(bench/serve_load.py). TTFT over every request of every round.", ""]
    lines += [head, rule]
    for n in ours[0]:
        row = f"| {n} | {' / '.join(format(r[n]['tokens_per_s'], '.1f') for r in ours if n in r)} |"
        if peer:
            theirs = [r[n] for r in peer if n in r]
            ratios = [a[n]["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs) if b["tokens_per_s"]]
            row += (f" {' / '.join(format(b['tokens_per_s'], '.1f') for b in theirs)} | "
                    f"{' / '.join(f'{x:.2f}x' for x in ratios)} |"
                    f" {_ttft([r[n] for r in ours if n in r])} | {_ttft(theirs)} |")
        lines.append(row)
    return lines


def _ttft(runs: list[dict]) -> str:
    """p50 / p95 per round, in seconds."""
    got = [f"{r['ttft_p50_s']:.2f} / {r['ttft_p95_s']:.2f}" for r in runs if r.get("ttft_p50_s") is not None]
    return "; ".join(got) + " s" if got else "n/a"


def structured(st: dict) -> list[str]:
    lines = [f"Greedy decode, {st['new_tokens']} new tokens a request, {st['dtype']}, with and without a JSON "
             f"schema's grammar (compiled once in {st['compile_s']:.2f} s). Best run of each side.", "",
             "| batch | plain tok/s | JSON tok/s | overhead (wall) | overhead (CPU time) | grammar CPU per step |",
             "|---|---|---|---|---|---|"]
    for batch in (1, 8):
        r = st[f"batch{batch}"]
        lines.append(f"| {batch} | {r['wall']['plain_tok_s']:.1f} | {r['wall']['json_tok_s']:.1f} | "
                     f"{r['wall']['overhead']:+.1%} | {r['cpu']['overhead']:+.1%} | "
                     f"{r['grammar_ms_per_step']:.2f} ms of a step's {r['step_ms']:.1f} ms |")
    return lines
