"""bench/RESULTS.md from one run's figures (bench/.work/rows.json): every target of the
performance issue with its ratio in each round, a "met?" column, the held-out losses, and the
settings that differ between the tools and why. The previous RESULTS.md moves to HISTORY.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

LOSS_TOLERANCE = 0.02  # tailor's held-out loss within 2% of the peer's
LEARNED = 0.9  # "clearly below the base model": at most 90% of its held-out loss


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


def n_params(model: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model) / "model.safetensors"), "pt") as f:
        total = 0
        for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            n = 1
            for s in f.get_slice(k).get_shape():
                n *= s
            total += n
    return total


def _fmt(v, spec=",.4g") -> str:
    return "n/a" if v is None else format(v, spec)


def _per_round(pairs: list[tuple[float | None, float | None]], spec=".2f") -> tuple[str, list[float]]:
    """'a/b' ratios per round as text, and the ratios."""
    ratios = [a / b for a, b in pairs if a and b]
    return " / ".join(format(r, spec) + "x" for r in ratios) or "n/a", ratios


def _rows(found, config, tool):
    return sorted((r for r in found.get("train", []) if r["config"] == config and r["tool"] == tool),
                  key=lambda r: r["round"])


def _by_round(found, config, key):
    """[(tailor's value, TRL bf16's value)] per round of one config."""
    ours, peer = _rows(found, config, "tailor"), _rows(found, config, "trl-bf16")
    return [(a.get(key), b.get(key)) for a, b in zip(ours, peer)]


def target_rows(found: dict) -> list[str]:
    out = []
    configs = [c["name"] for c in found.get("configs", []) if _rows(found, c["name"], "tailor")]
    for name in configs:
        text, ratios = _per_round(_by_round(found, name, "tokens_per_s"))
        out.append(f"| training tokens/s >= 5x TRL-bf16 | {name} | {text} | {_met(ratios, lambda r: r >= 5)} |")
    for name in configs:
        text, ratios = _per_round(_by_round(found, name, "peak_rss_mb"))
        out.append(f"| peak RSS <= 0.5x TRL-bf16 | {name} | {text} | {_met(ratios, lambda r: r <= 0.5)} |")
    for name in configs:
        pairs = _by_round(found, name, "val_loss")
        diffs = [a / b - 1 for a, b in pairs if a and b]
        text = " / ".join(f"{d:+.1%}" for d in diffs) or "n/a"
        out.append(f"| held-out loss within 2% of TRL-bf16 (equal tokens) | {name} | {text} | "
                   f"{_met(diffs, lambda d: abs(d) <= LOSS_TOLERANCE)} |")
    base = found.get("base_loss", {})
    for c in [c for c in found.get("configs", []) if c["name"] in configs and base.get(c["shape"])]:
        fracs = {t: [r["val_loss"] / base[c["shape"]] for r in _rows(found, c["name"], t)] for t in ("tailor", "trl-bf16")}
        text = ", ".join(f"{t} " + " / ".join(f"{f:.2f}x" for f in fs) for t, fs in fracs.items())
        out.append(f"| (section 1) the data is learned: held-out loss <= {LEARNED}x the base model's "
                   f"({base[c['shape']]:.3f}) | {c['name']} | {text} | "
                   f"{_met(fracs['tailor'] + fracs['trl-bf16'], lambda f: f <= LEARNED)} |")
    firsts = [r["first_step_s"] for name in configs[:1] for r in _rows(found, name, "tailor")]
    if firsts:  # the first config's rounds; round 2 on has a warm data cache
        warm = firsts[1:] or firsts
        peer = " / ".join(_fmt(r["first_step_s"], ".1f") + " s" for r in _rows(found, configs[0], "trl-bf16"))
        out.append(f"| time to first step <= 10 s (warm cache: round 2 on) | {configs[0]} | "
                   f"{' / '.join(_fmt(s, '.1f') + ' s' for s in firsts)} (TRL-bf16: {peer}) | "
                   f"{_met([s for s in warm if s is not None], lambda s: s <= 10)} |")
    out += _decode_targets(found.get("generate"))
    if found.get("structured"):
        st = found["structured"]
        for batch in (1, 8):
            row = st[f"batch{batch}"]
            wall, cpu = row["wall"]["overhead"], row["cpu"]["overhead"]
            out.append(f"| JSON-schema decode overhead <= 10% | batch {batch} | wall {wall:+.1%}, CPU time {cpu:+.1%} "
                       f"| {_met([wall], lambda o: o <= 0.1)} |")
    return out


def _met(values: list, ok) -> str:
    if not values:
        return "n/a"
    good = [ok(v) for v in values]
    return "yes" if all(good) else ("no" if not any(good) else "mixed")


def _tps(runs: list[dict]) -> list[float]:
    return [r["tokens_per_s"] for r in runs]


def best_hf(gen: dict) -> tuple[str, list[float]]:
    """HF generate's faster dtype (by mean over rounds) and its per-round tokens/s."""
    means = {k: sum(_tps(gen[k])) / len(gen[k]) for k in ("hf-fp32", "hf-bf16") if gen.get(k)}
    best = max(means, key=means.get)
    return best, _tps(gen[best])


def _decode_targets(gen: dict | None) -> list[str]:
    if not gen:
        return []
    out = []
    ours = _tps(gen["tailor"])
    hf_name, hf = best_hf(gen)
    text, ratios = _per_round(list(zip(ours, hf)))
    out.append(f"| batch-1 decode >= 3x best HF generate ({hf_name}) | tailor bf16 | {text} | "
               f"{_met(ratios, lambda r: r >= 3)} |")
    pairs = [("tailor", "llama-f16", "tailor bf16 vs llama.cpp f16")]
    if gen.get("tailor-flags"):
        pairs.append(("tailor-flags", "llama-q8_0", f"tailor {gen['flags']} vs llama.cpp q8_0"))
    for mine, peer, label in pairs:
        if gen.get(peer) and gen.get(mine):
            text, ratios = _per_round(list(zip(_tps(gen[mine]), _tps(gen[peer]))))
            out.append(f"| batch-1 decode >= llama.cpp, same precision class | {label} | {text} | "
                       f"{_met(ratios, lambda r: r >= 1)} |")
    rounds = gen["serve"].get("rounds") or [gen["serve"]["clients"]]
    text, ratios = _per_round([(r["8"], r["1"]) for r in rounds])
    out.append(f"| server tokens/s at 8 clients >= 3x 1 client | tailor serve | {text} | "
               f"{_met(ratios, lambda r: r >= 3)} |")
    return out


def training_table(found: dict) -> list[str]:
    base = found.get("base_loss", {})
    lines = ["| config | tool | tokens/s per round | trained tokens/s | peak RSS MB | first step s | "
             "held-out loss (base) | dtype seen |", "|---|---|---|---|---|---|---|---|"]
    for c in found.get("configs", []):
        for tool in ("trl-bf16", "trl-fp32", "tailor"):
            rs = _rows(found, c["name"], tool)
            if not rs:
                continue
            def col(k, spec, rs=rs):
                return " / ".join(_fmt(r.get(k), spec) for r in rs)

            dtype = rs[0].get("activation_dtype") or rs[0].get("compute_dtype") or ""
            lines.append(f"| {c['name']} | {tool} | {col('tokens_per_s', ',.0f')} | {col('trained_tokens_per_s', ',.0f')} | "
                         f"{col('peak_rss_mb', ',.0f')} | {col('first_step_s', '.1f')} | {col('val_loss', '.3f')} "
                         f"({_fmt(base.get(c['shape']), '.3f')}) | {dtype.replace('torch.', '')} |")
    learned = [r for r in found.get("train", []) if base.get(r["shape"]) and r.get("val_loss")]
    below = sum(r["val_loss"] <= LEARNED * base[r["shape"]] for r in learned)
    lines += ["", f"Held-out loss at or below {LEARNED:.0%} of the base model's (it learned): {below} of "
              f"{len(learned)} runs."]
    finish = [r["finish_s"] for r in found.get("train", []) if r.get("finish_s") is not None]
    if finish:  # TRL's runs save nothing (save_strategy "no"), so this has no peer column
        lines += [f"tailor after its last step (final evaluation, checkpoint, final/, loss.png): "
                  f"{min(finish):.1f}-{max(finish):.1f} s per run, not counted in tokens/s."]
    return lines


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


# ---- DPO vs TRL's DPOTrainer (bench/run.py bench_dpo) ------------------------------------------

DPO_TOKENS_X, DPO_RSS_X = 3.0, 0.6  # DPO targets (issue 21); the loss tolerance is LOSS_TOLERANCE


def _dpo_runs(rows: list[dict], config: str, tool: str) -> list[dict]:
    return sorted((r for r in rows if r["config"] == config and r["tool"] == tool), key=lambda r: r["round"])


def dpo_target_rows(found: dict) -> list[str]:
    rows, out = found.get("dpo") or [], []
    for c in found.get("dpo_configs", []):
        pairs = list(zip(_dpo_runs(rows, c["name"], "tailor"), _dpo_runs(rows, c["name"], "trl-bf16")))
        if not pairs:
            continue
        speed = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]
        rss = [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in pairs]
        loss = [a["val_dpo_loss"] / b["val_dpo_loss"] - 1 for a, b in pairs]
        out += [f"| DPO tokens/s >= {DPO_TOKENS_X:g}x TRL-bf16 DPOTrainer | {c['name']} | "
                f"{' / '.join(f'{x:.2f}x' for x in speed)} | {_met(speed, lambda x: x >= DPO_TOKENS_X)} |",
                f"| DPO peak RSS <= {DPO_RSS_X:g}x TRL-bf16 | {c['name']} | {' / '.join(f'{x:.2f}x' for x in rss)} | "
                f"{_met(rss, lambda x: x <= DPO_RSS_X)} |",
                f"| DPO held-out preference loss within 2% of TRL-bf16 | {c['name']} | "
                f"{' / '.join(f'{d:+.1%}' for d in loss)} | {_met(loss, lambda d: abs(d) <= LOSS_TOLERANCE)} |"]
    return out


def dpo_table(found: dict) -> list[str]:
    rows = found.get("dpo") or []
    lines = ["| config | tool | tokens/s per round | peak RSS MB | first step s | held-out DPO loss (base: ln 2 = "
             "0.693) | held-out preference accuracy |", "|---|---|---|---|---|---|---|"]
    for c in found.get("dpo_configs", []):
        for tool in ("trl-bf16", "tailor"):
            runs = _dpo_runs(rows, c["name"], tool)
            if runs:
                cols = [" / ".join(_fmt(r.get(key), spec) for r in runs) for key, spec in (
                    ("tokens_per_s", ",.0f"), ("peak_rss_mb", ",.0f"), ("first_step_s", ".1f"),
                    ("val_dpo_loss", ".4f"), ("val_accuracy", ".2f"))]
                lines.append(f"| {c['name']} | {tool} | " + " | ".join(cols) + " |")
    return lines


DPO_SETTINGS = (
    "Both tools train the same pairs (bench/dpo_data.py) in the same order, batch 4 pairs, sigmoid loss, "
    "beta 0.1, constant lr, the first step untimed. TRL runs bf16 autocast with precompute_ref_log_probs "
    "(no reference forward in the timed steps; for full fine-tuning no second model), tailor its default "
    "cached reference (the same idea); both passes count in the time to first step, not in tokens/s. Each "
    "tool's final model is scored on the held-out pairs by bench/common.py against the base model's "
    "log-probs (one computation for both). Tokens are real tokens of both sequences of each pair.")


def _grpo(name: str, found: dict | None = None):
    """bench/grpo_results.py's rows (imported only for a run that has GRPO figures: bench/ is on
    the path of bench/run.py, not of a test that loads this file alone)."""
    if found is not None and not found.get("grpo"):
        return []
    import grpo_results

    value = getattr(grpo_results, name)
    return value(found) if found is not None else value


def decode_table(gen: dict) -> list[str]:
    lines = ["| batch-1 decode (greedy, 50-token prompt, 64 new tokens) | tokens/s per round |", "|---|---|"]
    names = {"hf-fp32": "HF generate fp32", "hf-bf16": "HF generate bf16", "tailor": "tailor engine bf16",
             "tailor-flags": f"tailor engine bf16 {gen.get('flags', '')}", "llama-f16": "llama.cpp f16 GGUF (2 threads)",
             "llama-q8_0": "llama.cpp q8_0 GGUF (2 threads)"}
    for key, label in names.items():
        if gen.get(key):
            lines.append(f"| {label} | {' / '.join(f'{v:.1f}' for v in _tps(gen[key]))} |")
    if gen.get("flags_error"):
        lines.append(f"| tailor engine bf16 {gen['flags']} | failed: {gen['flags_error']} |")
    hf_name, _ = best_hf(gen)
    lines += ["", f"HF generate's faster dtype in this run: {hf_name.split('-')[1]} (the peer in the targets).", "",
              "| server clients | total tokens/s per round |", "|---|---|"]
    rounds = gen["serve"].get("rounds") or [gen["serve"]["clients"]]
    lines += [f"| {k} | {' / '.join(f'{r[k]:.1f}' for r in rounds)} |" for k in rounds[0]]
    return lines


def structured_table(st: dict) -> list[str]:
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


def render(found: dict, command: str) -> str:
    info, peak = found["info"], found["peak"]
    lines = [
        f"# tailor benchmark results ({info['date']})", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']}, "
        f"{info['threads']} torch threads. Command: `{command}` ({found['rounds']} round(s), "
        f"{found.get('minutes', 0):.0f} min). Measured matmul peak (torch.mm 2048^3): bf16 "
        f"{peak['bf16_tflops']:.2f} TFLOP/s, fp32 {peak['fp32_tflops']:.2f} TFLOP/s.", "",
        "## Targets (performance issue, section 2); each round's ratio, tailor / peer", "",
        "| target | config | per round | met? |", "|---|---|---|---|", *target_rows(found),
        *dpo_target_rows(found), *_grpo("target_rows", found), "",
    ]
    if found.get("train"):
        lines += ["## Training: tailor vs TRL SFTTrainer", "",
                  "Configs: shape (short ~150 tokens, long ~1,000), batch (4, or 16 = micro-batch 4 x accumulation 4), "
                  "method. Figures are per round, in round order.", "", *training_table(found), "", SETTINGS, ""]
    if found.get("dpo"):
        lines += ["## DPO: tailor vs TRL DPOTrainer", "", *dpo_table(found), "", DPO_SETTINGS, ""]
    if found.get("grpo"):
        lines += ["## GRPO: tailor vs TRL GRPOTrainer", "", *_grpo("table", found), "", _grpo("SETTINGS"), ""]
    if found.get("demo"):
        d = found["demo"]
        lines += [f"`make demo`'s training (`tailor train examples/pirate-lora.yaml`, command start to exit): "
                  f"{d['seconds']:.0f} s for {d['steps']} steps, final validation loss {_fmt(d['final_val_loss'], '.3f')}, "
                  f"peak RSS {d['peak_rss_mb']:,.0f} MB.", ""]
    if found.get("generate"):
        lines += ["## Decode and serving", "", *decode_table(found["generate"]), ""]
    if found.get("data"):
        t, o = found["data"]["trl"], found["data"]["tailor"]
        lines += ["## Data preparation (20,000 chats, SmolLM2 template, assistant masks, no cache), one round", "",
                  f"TRL {t['examples_per_s']:,.0f} examples/s, tailor {o['examples_per_s']:,.0f} examples/s "
                  f"({o['examples_per_s'] / t['examples_per_s']:.2f}x).", ""]
    if found.get("service"):
        lines += ["## Fine-tuning service (`tailor serve`, bench/service_latency.py), one round", "",
                  "```", found["service"]["table"], "```", ""]
    if found.get("structured"):
        lines += ["## Structured outputs (bench/structured_speed.py)", "", *structured_table(found["structured"]), ""]
    lines += ["Raw figures of every run: bench/.work/rows.json. Analysis of the misses: bench/ANALYSIS.md. "
              "Earlier results: bench/HISTORY.md."]
    return "\n".join(lines)


def write(out: Path, text: str, history: Path | None) -> None:
    """Atomic writes; the RESULTS.md being replaced goes on top of HISTORY.md first."""
    if history is not None and out.is_file():
        old = out.read_text()
        past = history.read_text() if history.is_file() else "# Earlier benchmark results (newest first)\n"
        head, _, rest = past.partition("\n")
        _atomic(history, f"{head}\n\n{old.rstrip()}\n\n{rest.lstrip()}")
    _atomic(out, text + "\n")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
