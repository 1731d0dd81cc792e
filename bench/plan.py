"""What `make bench` trains, and how long it should take: the training configs, their steps and
rounds, and an estimate printed at the start.

Steps per config are chosen to keep the whole bench under 40 minutes on a 2-core CPU: short
batch-4 runs take the most timed steps (they carry the held-out loss check: the model must learn
the voice and formats); batch-16 runs (4x larger steps) and long batch-4 runs (~6x) take one timed
step. Every default config gets two alternating rounds (about 22 minutes in all on an idle 2-core
CPU).
Long chats at batch 16 (16,000 tokens a step, ~3 minutes a step for TRL) run only when named
with --configs.
"""

from __future__ import annotations

MAX_LENGTH = {"short": 1024, "long": 2048}  # above every example, so none is dropped or cut
MEAN_TOKENS = {"short": 153, "long": 970}  # per example, measured on bench/dataset.py's files
DATA_SIZES = {"full": {"short": {"train": 320, "val": 16}, "long": {"train": 64, "val": 8}},
              "quick": {"short": {"train": 32, "val": 8}, "long": {"train": 16, "val": 4}}}
# LoRA learns the voice and formats within a few steps at 1e-3 (as `make demo` trains); full
# fine-tuning at 5e-5, the usual range for a 135M model, with every weight moving.
LR = {"lora": "1e-3", "full": "5e-5"}


def _config(shape: str, method: str, batch: int, accum: int, steps: int, rounds: int, *, fp32_peer=False,
            default=True) -> dict:
    return {"name": f"{shape}-b{batch * accum}-{method}", "shape": shape, "method": method, "batch": batch,
            "accum": accum, "steps": steps, "rounds": rounds, "lr": LR[method], "max_length": MAX_LENGTH[shape],
            "fp32_peer": fp32_peer, "default": default}


ALL = [
    _config("short", "lora", 4, 1, 5, 2, fp32_peer=True),
    _config("short", "full", 4, 1, 5, 2, fp32_peer=True),
    _config("short", "lora", 4, 4, 1, 2),
    _config("short", "full", 4, 4, 1, 2),
    _config("long", "lora", 4, 1, 1, 2),
    _config("long", "full", 4, 1, 1, 2),
    _config("long", "lora", 4, 4, 1, 1, default=False),
    _config("long", "full", 4, 4, 1, 1, default=False),
]


# DPO vs TRL's DPOTrainer (bench/dpo_data.py pairs of short shop chats, ~2 x 170 tokens each):
# batch 4 pairs, LoRA and full, alternating rounds. lr: the usual DPO range, lower than SFT's.
DPO_SIZES = {"full": {"train": 64, "val": 16}, "quick": {"train": 16, "val": 4}}
DPO_TOKENS = 340  # per pair, both sequences
DPO = [{"name": "dpo-b4-lora", "method": "lora", "batch": 4, "accum": 1, "steps": 5, "rounds": 2, "lr": "2e-4"},
       {"name": "dpo-b4-full", "method": "full", "batch": 4, "accum": 1, "steps": 5, "rounds": 2, "lr": "5e-6"}]


def dpo_configs(quick: bool) -> list[dict]:
    return [{**c, "steps": 2, "rounds": 1} for c in DPO[:1]] if quick else DPO


# GRPO vs TRL's GRPOTrainer (bench/grpo_task.py: short additions, the example's reward): 4 prompts x 8
# replies of up to 32 tokens per step, LoRA, lr 5e-4, temperature 0.7, alternating rounds.
GRPO = [{"name": "grpo-p4-g8-lora", "method": "lora", "prompts": 4, "generations": 8, "tokens": 32, "steps": 12,
         "rounds": 2, "lr": "5e-4"}]


def grpo_configs(quick: bool) -> list[dict]:
    return [{**c, "steps": 2, "rounds": 1} for c in GRPO] if quick else GRPO


def configs(quick: bool, names: str | None) -> list[dict]:
    if names:
        chosen = [c for c in ALL if c["name"] in names.split(",")]
        unknown = set(names.split(",")) - {c["name"] for c in chosen}
        if unknown:
            raise SystemExit(f"bench: unknown config(s) {sorted(unknown)}; known: {[c['name'] for c in ALL]}")
    else:
        chosen = [c for c in ALL if c["default"]][:1 if quick else None]
    if quick:  # a smoke test: a few steps, one round
        chosen = [{**c, "steps": min(c["steps"], 2), "rounds": 1} for c in chosen]
    return chosen


# Rough figures for the estimate (tokens/s and seconds), from earlier runs on 2-core CPUs.
RATE = {("trl-bf16", "lora"): 200, ("trl-bf16", "full"): 200, ("trl-fp32", "lora"): 140, ("trl-fp32", "full"): 135,
        ("tailor", "lora"): 500, ("tailor", "full"): 390}  # bench/RESULTS.md, 2026-11-29, idle AMD EPYC
START_S = {"trl-bf16": 15, "trl-fp32": 15, "tailor": 12}  # start to step 1, and (tailor) its final save
SCORE_TOKENS_PER_S = 500  # held-out scoring, fp32 forward only
# a decode round is ~110 s; serving adds ~140 s a round: llama-cpp-python's server answers 1+4+8+16
# clients x 2 requests x 64 tokens one request at a time (~40 tokens/s), tailor's batches
OTHER_S = {"demo": 120, "generate": 75, "generate-round": 250, "data": 60, "service": 180, "structured": 60}


def estimate(configs_: list[dict], parts: set, rounds: int, quick: bool = False) -> list[tuple[str, float]]:
    """(what, seconds) for each piece of the run."""
    out = [("peak, mask checks, base-model scoring", 40.0)]
    sizes = DATA_SIZES["quick" if quick else "full"]
    for c in configs_ if "train" in parts else []:
        tokens = (c["steps"] + 1) * c["batch"] * c["accum"] * MEAN_TOKENS[c["shape"]]
        score = sizes[c["shape"]]["val"] * MEAN_TOKENS[c["shape"]] / SCORE_TOKENS_PER_S
        tools = ["trl-bf16", "tailor"]
        per_round = sum(START_S[t] + tokens / RATE[(t, c["method"])] + score for t in tools)
        extra = START_S["trl-fp32"] + tokens / RATE[("trl-fp32", c["method"])] + score if c["fp32_peer"] else 0
        out.append((f"train {c['name']} x{min(rounds, c['rounds'])}", per_round * min(rounds, c["rounds"]) + extra))
    if "dpo" in parts:
        n = DPO_SIZES["quick" if quick else "full"]
        for c in dpo_configs(quick):
            # each tool: start, a reference pass over the training pairs (forward only, ~3x faster
            # per token than a step), the steps, the held-out scoring; TRL's rate as for SFT
            work = (c["steps"] + 1) * c["batch"] * DPO_TOKENS + n["train"] * DPO_TOKENS / 3
            score = n["val"] * DPO_TOKENS / SCORE_TOKENS_PER_S
            per_round = sum(START_S[t] + work / RATE[(t, c["method"])] + score for t in ("trl-bf16", "tailor"))
            out.append((f"dpo {c['name']} x{min(rounds, c['rounds'])}", per_round * min(rounds, c["rounds"])))
    if "grpo" in parts:
        for c in grpo_configs(quick):  # per step on a 2-core CPU: tailor ~15 s, TRL ~60 s (2026-12 runs)
            per_round = (c["steps"] + 1) * (15 + 60) + START_S["tailor"] + START_S["trl-bf16"]
            out.append((f"grpo {c['name']} x{min(rounds, c['rounds'])}", per_round * min(rounds, c["rounds"])))
    if "generate" in parts:
        out.append(("decode + serving (tailor, llama.cpp)", OTHER_S["generate"] + OTHER_S["generate-round"] * rounds))
    out += [(p, OTHER_S[p]) for p in ("demo", "data", "service", "structured") if p in parts]
    return out


def describe(configs_: list[dict], parts: set, rounds: int, quick: bool = False) -> str:
    pieces = estimate(configs_, parts, rounds, quick)
    lines = ["bench plan (expected duration on an idle 2-core CPU; a busy machine takes longer):"]
    lines += [f"  {what:<40} ~{s / 60:4.1f} min" for what, s in pieces]
    lines.append(f"  {'total':<40} ~{sum(s for _, s in pieces) / 60:4.1f} min")
    return "\n".join(lines)
