"""The GRPO rows of bench/RESULTS.md (bench/run.py bench_grpo): tailor vs TRL's GRPOTrainer."""

from __future__ import annotations

import math

STEPS_X = 3.0  # the target: at least 3x TRL's steps per hour


def _runs(rows: list[dict], config: str, tool: str) -> list[dict]:
    return sorted((r for r in rows if r["config"] == config and r["tool"] == tool), key=lambda r: r["round"])


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def target_rows(found: dict) -> list[tuple[str, str, str, str]]:
    rows, out = found.get("grpo") or [], []
    for c in found.get("grpo_configs", []):
        pairs = list(zip(_runs(rows, c["name"], "tailor"), _runs(rows, c["name"], "trl-bf16")))
        if not pairs:
            continue
        speed = [b["step_s"] / a["step_s"] for a, b in pairs]
        met = "yes" if all(x >= STEPS_X for x in speed) else "no"
        out.append((f"GRPO steps per hour >= {STEPS_X:g}x TRL-bf16 GRPOTrainer", c["name"],
                    " / ".join(f"{x:.2f}x" for x in speed), met))
        tailor = [x for a, _ in pairs for x in a["rewards"]]
        trl = [x for _, b in pairs for x in b["rewards"]]
        out.append(("GRPO reward trajectory statistically the same (mean over all steps, Welch t, |t| < 2)",
                    c["name"], f"tailor {_mean(tailor):.3f}, TRL {_mean(trl):.3f}, t = {_welch(tailor, trl):+.2f}",
                    "yes" if abs(_welch(tailor, trl)) < 2 else "no"))
    return out


def _welch(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    va = sum((x - _mean(a)) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - _mean(b)) ** 2 for x in b) / (len(b) - 1)
    return (_mean(a) - _mean(b)) / math.sqrt(va / len(a) + vb / len(b) or 1e-12)


def table(found: dict) -> list[str]:
    rows = found.get("grpo") or []
    lines = ["| config | tool | step s per round | rollout tokens/s | sampling s per step | mean reply tokens | "
             "mean reward, steps 1-4 / last 4 | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for c in found.get("grpo_configs", []):
        for tool in ("trl-bf16", "tailor"):
            for r in _runs(rows, c["name"], tool):
                rw = r["rewards"]
                lines.append(f"| {c['name']} (round {r['round'] + 1}) | {tool} | {r['step_s']:.1f} | "
                             f"{r['rollout_tokens_per_s']:.0f} | {r['sampling_s']:.1f} | "
                             f"{r['completion_length']:.1f} | {_mean(rw[:4]):.3f} / {_mean(rw[-4:]):.3f} | "
                             f"{r['peak_rss_mb']:,.0f} |")
    return lines


SETTINGS = (
    "Both tools: SmolLM2-135M-Instruct, LoRA r16/alpha32/all-linear, the same prompts (bench/grpo_task.py: "
    "short additions), 4 prompts x 8 replies of up to 32 tokens per step at temperature 0.7, the same reward "
    "(tailor: the example's grader through tailor.graders; TRL: the same arithmetic as a Python function), "
    "loss dapo, beta 0, constant lr 5e-4, the first step untimed. TRL: transformers generation (its CPU path; "
    "vLLM needs a GPU) with bf16 autocast; tailor: its engine over the policy's live weights, bf16 where the CPU "
    "is fast at it. Step time is the whole step (sampling, grading, forward, backward, optimizer); rollout "
    "tokens/s counts the sampled reply tokens over the time spent sampling. Each tool draws its steps' prompts "
    "from the same set in its own order, so rewards compare as trajectories, not step by step.")
