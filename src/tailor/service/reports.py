"""What a training run's logs become for the job's owner: metrics events shaped as OpenAI's
(supervised and DPO: train_loss, valid_loss ...; reinforcement: train_reward_mean and
valid_reward_mean, as OpenAI's RFT jobs report them) and the result file (step_metrics.csv)."""

from __future__ import annotations

import csv
import io

CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# A DPO run's metrics (tailor.train.objectives.dpo), as train_* and valid_* in events and the result CSV.
PREFERENCE = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "logps_chosen",
              "logps_rejected")
# A reinforcement run's (tailor.train.objectives.grpo), as train_* and valid_*: OpenAI's RFT jobs report
# train_reward_mean and valid_reward_mean; a multi grader's graders each add reward_<key>_mean.
REINFORCEMENT = ("reward_mean", "reward_std", "completion_length", "kl", "clip_fraction", "grader_errors")


def metrics_csv(train_log: list[dict], eval_log: list[dict]) -> bytes:
    """OpenAI's result file: one row per logged step; validation columns where an eval ran; a DPO
    run adds its reward and log-prob columns, a reinforcement run its reward columns (each
    sub-grader's too), train_* and valid_*."""
    evals = {r["step"]: r for r in eval_log if "val_loss" in r or "val_reward_mean" in r}
    first = train_log[0] if train_log else {}
    dpo = [k for k in PREFERENCE if k in first]
    rft = [k for k in first if k in REINFORCEMENT or _sub_reward(k)]
    valid = dpo + [k for k in rft if k.startswith("reward_") and k != "reward_std"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS + tuple(f"train_{k}" for k in dpo + rft) + tuple(f"valid_{k}" for k in valid))
    for r in train_log:
        e = evals.get(r["step"], {})
        w.writerow([r["step"], r["loss"], "", e.get("val_loss", ""), e.get("val_accuracy", "")]
                   + [r.get(k, "") for k in dpo + rft] + [e.get(f"val_{k}", "") for k in valid])
    return buf.getvalue().encode()


def preference_words(r: dict, prefix: str = "") -> str:
    """DPO's two headline numbers for an event's message ('' for a supervised run)."""
    if f"{prefix}rewards_margin" not in r:
        return ""
    return (f", reward margin={r[f'{prefix}rewards_margin']:.4f}, "
            f"preference accuracy={r[f'{prefix}rewards_accuracy']:.3f}")


def _sub_reward(key: str) -> bool:
    """reward_<key>_mean: one sub-grader's mean reward (a multi grader's)."""
    return key.startswith("reward_") and key.endswith("_mean") and key != "reward_mean"


def reinforcement_data(r: dict, split: str) -> dict:
    """A GRPO record as OpenAI's RFT metrics event data: train_reward_mean (or valid_), the flat
    legacy keys, and `scores` with each sub-grader's mean."""
    prefix, out = ("", "train") if split == "train" else ("val_", "valid")
    if f"{prefix}reward_mean" not in r:
        return {}
    data = {f"{out}_{k}": r[f"{prefix}{k}"] for k in REINFORCEMENT if f"{prefix}{k}" in r}
    subs = [k[len(prefix):] for k in r if k.startswith(prefix) and _sub_reward(k[len(prefix):])]
    data.update({f"{out}_{k}": r[f"{prefix}{k}"] for k in subs})
    data["scores"] = {f"{out}_reward_mean": r[f"{prefix}reward_mean"],
                      "graders": [{"name": k[len("reward_"):-len("_mean")], f"{out}_reward_mean": r[f"{prefix}{k}"]}
                                  for k in subs]}
    data["train_mean_reward" if split == "train" else "full_valid_mean_reward"] = r[f"{prefix}reward_mean"]
    return data


def reward_words(r: dict, split: str) -> str:
    """The RFT headline for an event's message ('' for other runs), as OpenAI words it."""
    key = "reward_mean" if split == "train" else "val_reward_mean"
    if key not in r:
        return ""
    return f", {'train' if split == 'train' else 'full validation'} mean reward={r[key]:.4f}"
