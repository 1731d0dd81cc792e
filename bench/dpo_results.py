"""The DPO rows of bench/RESULTS.md (bench/run.py bench_dpo): tailor vs TRL's DPOTrainer."""

from __future__ import annotations

from targets import LOSS_TOLERANCE, fmt, met

TOKENS_X, RSS_X = 3.0, 0.6  # the DPO issue's targets; the loss tolerance is LOSS_TOLERANCE


def _runs(rows: list[dict], config: str, tool: str) -> list[dict]:
    return sorted((r for r in rows if r["config"] == config and r["tool"] == tool), key=lambda r: r["round"])


def target_rows(found: dict) -> list[tuple[str, str, str, str]]:
    rows, out = found.get("dpo") or [], []
    for c in found.get("dpo_configs", []):
        pairs = list(zip(_runs(rows, c["name"], "tailor"), _runs(rows, c["name"], "trl-bf16")))
        if not pairs:
            continue
        speed = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]
        rss = [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in pairs]
        loss = [a["val_dpo_loss"] / b["val_dpo_loss"] - 1 for a, b in pairs]
        out += [(f"DPO tokens/s >= {TOKENS_X:g}x TRL-bf16 DPOTrainer", c["name"],
                 " / ".join(f"{x:.2f}x" for x in speed), met(speed, lambda x: x >= TOKENS_X)),
                (f"DPO peak RSS <= {RSS_X:g}x TRL-bf16", c["name"], " / ".join(f"{x:.2f}x" for x in rss),
                 met(rss, lambda x: x <= RSS_X)),
                ("DPO held-out preference loss within 2% of TRL-bf16", c["name"],
                 " / ".join(f"{d:+.1%}" for d in loss), met(loss, lambda d: abs(d) <= LOSS_TOLERANCE))]
    return out


def table(found: dict) -> list[str]:
    rows = found.get("dpo") or []
    lines = ["| config | tool | tokens/s per round | peak RSS MB | first step s | held-out DPO loss (base: ln 2 = "
             "0.693) | held-out preference accuracy |", "|---|---|---|---|---|---|---|"]
    for c in found.get("dpo_configs", []):
        for tool in ("trl-bf16", "tailor"):
            runs = _runs(rows, c["name"], tool)
            if runs:
                cols = [" / ".join(fmt(r.get(key), spec) for r in runs) for key, spec in (
                    ("tokens_per_s", ",.0f"), ("peak_rss_mb", ",.0f"), ("first_step_s", ".1f"),
                    ("val_dpo_loss", ".4f"), ("val_accuracy", ".2f"))]
                lines.append(f"| {c['name']} | {tool} | " + " | ".join(cols) + " |")
    return lines


SETTINGS = (
    "Both tools train the same pairs (bench/dpo_data.py) in the same order, batch 4 pairs, sigmoid loss, "
    "beta 0.1, constant lr, the first step untimed. TRL runs bf16 autocast with precompute_ref_log_probs "
    "(no reference forward in the timed steps; for full fine-tuning no second model), tailor its default "
    "cached reference (the same idea); both passes count in the time to first step, not in tokens/s. Each "
    "tool's final model is scored on the held-out pairs by bench/common.py against the base model's "
    "log-probs (one computation for both). Tokens are real tokens of both sequences of each pair.")
