"""The one training config: every knob of `tailor train`, for the YAML file, the flags and the
Python API alike. Fields left at None get a per-method default in `resolve`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from tailor.errors import UsageError

# What each method gets when the user does not say (LoRA trains few weights, so it takes a
# learning rate about 10x higher than full fine-tuning).
METHOD_DEFAULTS = {"lora": {"lr": 2e-4}, "full": {"lr": 2e-5}}
# beta when the user does not say: DPO's paper and TRL use 0.1; TRL's GRPOTrainer 0 (no KL term:
# DAPO and Dr. GRPO found it unneeded, and it saves the reference forward).
OBJECTIVE_BETA = {"dpo": 0.1, "grpo": 0.0}


@dataclass
class TrainConfig:
    data: str | None = None
    """Training data (JSONL, see `tailor data check`): conversations, or raw text ({"text": ...}, every token trained) for --objective sft; preference pairs for --objective dpo; prompts (OpenAI's RFT lines: messages ending with a user turn, other keys for the grader) for --objective grpo."""
    val: str | None = None
    """Validation data (JSONL). Without it a small split of --data is held out (see --val-split)."""
    model: str = "default"
    """Base model: a folder, a .gguf file, a hub id, or 'default' (SmolLM2-135M-Instruct)."""
    method: Literal["lora", "full"] = "lora"
    """lora trains small adapter matrices (fast, small output); full trains every weight."""
    out: str = "runs/latest"
    """Output folder: checkpoints, metrics.jsonl, loss.png and final/."""
    resume: str | None = None
    """Continue the run in this output folder from its newest complete checkpoint."""

    objective: Literal["sft", "dpo", "grpo", "rft"] = "sft"
    """sft: learn the replies of supervised examples (or every token of raw text); dpo: learn to prefer the chosen reply of each preference pair over the rejected one (Direct Preference Optimization); grpo (alias rft): reinforcement fine-tuning, sampling --num-generations replies per prompt and learning from the rewards --grader or --reward gives them (GRPO)."""
    beta: float | None = None
    """How far the model may move from the reference (the starting model); higher keeps it closer. DPO: default 0.1. GRPO: the weight of the KL penalty, default 0 (TRL's: no reference forward at all)."""
    dpo_loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """DPO loss: sigmoid (the DPO paper) or ipo (IPO: per-token log-ratios pulled to a margin of 1/(2 beta))."""
    rpo_alpha: float = 0.0
    """DPO: add this weight times the chosen replies' mean token NLL to the loss (RPO; 0 turns it off)."""
    dpo_reference: Literal["cached", "copy"] = "cached"
    """DPO reference log-probs. cached: computed once before training in one pass (LoRA: adapters off; full: the model before its first step) and cached beside the rendered data; copy: computed every step (LoRA: adapters off, no extra memory; full: a frozen copy of the base in memory, about one more model)."""

    grader: str | None = None
    """GRPO: the reward, an OpenAI grader (string_check, text_similarity, score_model, python or multi) as a JSON file or the JSON itself; its {{item.*}} are the prompt line's keys. Recorded whole in config.yaml."""
    reward: str | None = None
    """GRPO: the reward as a Python function instead, module:function (importable from the working directory), called as function(sample, item) -> float like a python grader's grade, in this process."""
    judge_url: str | None = None
    """GRPO: the OpenAI-compatible server that score_model graders ask (e.g. a `tailor serve` URL); without it they score 0 with an error."""
    response_format: str | None = None
    """GRPO: OpenAI's response_format for the sampled replies ({"type": "json_schema", "json_schema": {...}} or json_object), as a JSON file or the JSON itself: replies follow it and graders read {{sample.output_json}}."""
    num_generations: int = 8
    """GRPO: replies sampled per prompt (the group whose rewards are compared); each step trains batch-size x grad-accum x processes prompts, each with this many replies."""
    max_completion_tokens: int = 256
    """GRPO: most tokens sampled per reply (a longer one is cut and still trained)."""
    temperature: float = 1.0
    """GRPO: sampling temperature of the replies."""
    top_p: float = 1.0
    """GRPO: nucleus sampling of the replies (1 turns it off)."""
    grpo_loss: Literal["dapo", "grpo", "dr_grpo"] = "dapo"
    """GRPO loss aggregation: dapo (TRL's default: token losses summed over the step and divided by its reply tokens, no length bias), grpo (each reply's token mean, then the mean over replies: short replies weigh more per token), dr_grpo (summed and divided by replies x --max-completion-tokens)."""
    epsilon: float = 0.2
    """GRPO: clip the probability ratio to [1 - epsilon, 1 + epsilon_high] (acts when --num-iterations reuses replies)."""
    epsilon_high: float | None = None
    """GRPO: the upper clip (default: --epsilon; DAPO recommends 0.28)."""
    num_iterations: int = 1
    """GRPO: optimizer steps taken on each step's replies (TRL's mu); above 1 the later steps are off-policy and the ratio is clipped."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """GRPO advantages: the reward minus its group's mean, divided by the group's standard deviation (group), the step's (batch), or not divided (none, Dr. GRPO's choice)."""
    eval_generations: int = 1
    """GRPO: replies sampled per validation prompt at each evaluation; val_reward_mean is their mean reward."""

    epochs: float = 3.0
    """Passes over the training data (ignored when --max-steps is given)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides --epochs)."""
    batch_size: int = 8
    """Examples per micro-batch (DPO: preference pairs, each two sequences; GRPO: prompts, each with --num-generations replies; ignored when --batch-tokens is given)."""
    batch_tokens: int | None = None
    """Tokens per micro-batch instead of a fixed example count (evens out step cost)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss is averaged over all their trained tokens."""
    max_length: int = 1024
    """Longest example in tokens; longer ones are dropped (or cut with --truncate). Also the row length when packing."""
    truncate: bool = False
    """Cut examples longer than --max-length instead of dropping them."""
    batching: Literal["group", "pack"] = "group"
    """group: batch examples of similar length, no cross-example masks (fastest on CPU); pack: concatenate examples into rows of --max-length, each attending to itself only. DPO on the fused forward packs each micro-batch's pairs into one row either way (a chosen reply is often much shorter than its rejected one)."""
    chat_template: str | None = None
    """For a base model without a chat template: chatml (default), llama3, alpaca, a .jinja file, or the Jinja text itself."""

    lr: float | None = None
    """Peak learning rate (default: 2e-4 for lora, 2e-5 for full)."""
    warmup: float = 0.05
    """Warm-up: a fraction of all steps when below 1, else a number of steps."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    min_lr_ratio: float = 0.0
    """The lr that cosine/linear decay ends at, as a fraction of the peak."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to norms and biases)."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 turns clipping off)."""
    seed: int = 42
    """Seed for initialisation, data order and dropout: same seed, same losses."""

    lora_r: int = 16
    """LoRA rank (adapter size; 8-64 is typical)."""
    lora_alpha: float = 32
    """LoRA scale numerator (the update is scaled by alpha/r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0.05-0.1 can help on tiny datasets; costs ~25% speed and ~0.7 GB on SmolLM2)."""
    lora_targets: str = "all-linear"
    """Layers that get adapters: all-linear, or comma-separated module names (q_proj,v_proj)."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA): often a little better, slower per step."""
    rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r."""
    qlora: bool = False
    """Load the frozen base in 4-bit (CUDA with bitsandbytes only)."""

    log_every: int = 1
    """Log a metrics line every this many steps."""
    eval_every: int | None = None
    """Evaluate every this many steps (default: about 4 times per run), and always at the end."""
    eval_samples: int = 3
    """Validation prompts answered (greedy) at each evaluation, shown beside their references (GRPO: validation replies shown with their rewards)."""
    sample_max_tokens: int = 64
    """Most tokens generated per evaluation sample."""
    val_split: float = 0.05
    """Without --val: the fraction of --data held out for validation (at most --val-max examples)."""
    val_max: int = 100
    """The most examples held out for validation when there is no --val."""
    save_every: int | None = None
    """Save a checkpoint every this many steps (default: with each evaluation), and always at the end."""
    keep_checkpoints: int = 2
    """Keep only the newest this many checkpoints."""
    push_to_hub: str | None = None
    """Push final/ to this Hugging Face Hub repo (OWNER/NAME) when training ends, like `tailor push` (the token is checked before training)."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that get every logged step, the evaluations, the config and the final model's path: none, tensorboard (OUT/tensorboard/), trackio, wandb, mlflow, or all installed ones; repeat it or separate with commas. Each is an optional extra: pip install 'tailor[tensorboard]'."""
    run_name: str | None = None
    """The run's name in the trackers (default: the --out folder's name)."""
    tracker_project: str | None = None
    """The trackers' project (W&B project, MLflow experiment, Trackio project; default: $WANDB_PROJECT, $MLFLOW_EXPERIMENT_NAME or $TRACKIO_PROJECT, else tailor)."""
    tracker_tags: list[str] | None = None
    """Tags for the run in W&B and MLflow (comma-separated)."""
    tracker_entity: str | None = None
    """The W&B entity (team or user) that owns the run (default: $WANDB_ENTITY, else your default entity)."""

    dtype: str = "auto"
    """auto (bf16 where fast, fp16 with loss scaling on a CUDA GPU without bf16, else fp32; master weights fp32), float32, bfloat16 or float16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    memory_budget_gb: float | None = None
    """Most memory (GiB) the run may plan for (default: the GPU's free memory, or the RAM available on a CPU); a run estimated above it gets a smaller micro-batch (same global batch) and/or gradient checkpointing, said at the start."""
    compile: bool = False
    """torch.compile the model body (pays off only for long runs; first steps are slow)."""
    fused: bool = True
    """Tailor's fused training forward for Llama-family models (faster on CPU; the same loss up to rounding); --no-fused runs the Hugging Face modules, to compare or troubleshoot. TAILOR_FUSED=0 in the environment also turns it off, and is recorded here."""
    device: str | None = None
    """cpu or cuda (default: cuda when available)."""
    nproc: int = 1
    """Train as this many processes on this machine (one per GPU, or CPU processes), re-launching through torchrun; --batch-size is each process's, so the global batch is batch-size x grad-accum x processes. Under torchrun itself this is ignored (its --nproc-per-node and --nnodes decide)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """With several processes: ddp (every process holds the whole model; gradients are summed across processes each step). fsdp (full fine-tuning only): FSDP2 shards the weights, gradients and optimizer state over the processes, for models too big for one device; it runs the Hugging Face body, not the fused forward."""


def env_overrides() -> dict[str, tuple[object, str]]:
    """field -> (value, why): fields the environment forces, for scripts older than the field.
    `resolve` applies them, so config.yaml and the checkpoints record what the run really did."""
    if os.environ.get("TAILOR_FUSED") == "0":
        return {"fused": (False, "TAILOR_FUSED=0 is set")}
    return {}


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill per-method defaults, apply `env_overrides`, and check the values together; every
    problem in one message."""
    lr = cfg.lr if cfg.lr is not None else METHOD_DEFAULTS[cfg.method]["lr"]
    objective = "grpo" if cfg.objective == "rft" else cfg.objective
    beta = cfg.beta if cfg.beta is not None else OBJECTIVE_BETA.get(objective, 0.1)
    cfg = dataclasses.replace(cfg, lr=lr, objective=objective, beta=beta,
                              **{k: v for k, (v, _) in env_overrides().items()})
    problems = []
    if not cfg.data and not cfg.resume:
        problems.append("data: give a training file with --data train.jsonl")
    positive = {"batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "max_length": cfg.max_length,
                "lora_r": cfg.lora_r, "log_every": cfg.log_every, "keep_checkpoints": cfg.keep_checkpoints,
                "nproc": cfg.nproc}
    for name in ("batch_tokens", "max_steps", "eval_every", "save_every"):
        if getattr(cfg, name) is not None:
            positive[name] = getattr(cfg, name)
    problems += [f"{k}: must be at least 1 (got {v})" for k, v in positive.items() if v < 1]
    if cfg.max_steps is None and cfg.epochs <= 0:
        problems.append(f"epochs: must be above 0 (got {cfg.epochs})")
    if cfg.lr <= 0:
        problems.append(f"lr: must be above 0 (got {cfg.lr})")
    if not 0 <= cfg.val_split < 1:
        problems.append(f"val_split: must be in [0, 1) (got {cfg.val_split})")
    if cfg.batch_tokens is not None and cfg.batch_tokens < cfg.max_length:
        problems.append(f"batch_tokens: must be at least max_length ({cfg.max_length}) so every example fits")
    if cfg.method == "full" and (cfg.qlora or cfg.dora):
        problems.append("qlora/dora: only apply to --method lora")
    if cfg.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        problems.append(f"dtype: {cfg.dtype!r} is not one of auto, float32, bfloat16, float16")
    if cfg.objective == "grpo":
        cfg, found = _grpo_options(cfg)
        problems += found + _grpo_problems(cfg)
    elif not cfg.beta > 0:
        problems.append(f"beta: must be above 0 (got {cfg.beta})")
    if cfg.rpo_alpha < 0:
        problems.append(f"rpo_alpha: must be 0 (off) or above (got {cfg.rpo_alpha})")
    if cfg.objective == "dpo" and cfg.dpo_reference == "copy" and cfg.parallel == "fsdp":
        problems.append("dpo_reference: copy keeps a whole second model on every process, which is what --parallel "
                        "fsdp avoids; use --dpo-reference cached")
    if cfg.parallel == "fsdp" and cfg.method != "full":
        problems.append("parallel: fsdp shards a full fine-tune; a LoRA run (--method lora) trains few weights and "
                        "fits on every process: use --parallel ddp")
    from tailor.train import trackers

    problems += trackers.problems(cfg.report_to)
    if problems:
        raise UsageError("Invalid training config:\n  " + "\n  ".join(problems))
    return cfg


def _grpo_options(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """--grader and --response-format checked and kept as their JSON text, so config.yaml and
    every checkpoint record the very grader the run used, not a path to a file that may change."""
    from tailor.errors import TailorError
    from tailor.train import rewards

    problems, changes = [], {}
    for name, check in (("grader", rewards.checked_grader), ("response_format", rewards.checked_response_format)):
        if getattr(cfg, name) is not None:
            try:
                changes[name] = check(getattr(cfg, name))
            except TailorError as exc:
                problems.append(str(exc))
    return dataclasses.replace(cfg, **changes), problems


def _grpo_problems(cfg: TrainConfig) -> list[str]:
    problems = []
    if (cfg.grader is None) == (cfg.reward is None):
        problems.append("grader/reward: give the reward as --grader GRADER.json or as --reward module:function "
                        "(one of them)")
    if cfg.reward is not None and (cfg.reward.count(":") != 1 or not all(cfg.reward.split(":"))):
        problems.append(f"reward: {cfg.reward!r} is not module:function (e.g. rewards:exact_answer)")
    if cfg.num_generations < 2:
        problems.append(f"num_generations: must be at least 2, so that each prompt's replies can be compared "
                        f"(got {cfg.num_generations})")
    for name in ("max_completion_tokens", "num_iterations", "eval_generations"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}: must be at least 1 (got {getattr(cfg, name)})")
    if cfg.beta < 0:
        problems.append(f"beta: must be 0 (no KL penalty) or above (got {cfg.beta})")
    if not 0 < cfg.temperature <= 10:
        problems.append(f"temperature: must be above 0 and at most 10 (got {cfg.temperature})")
    if not 0 < cfg.top_p <= 1:
        problems.append(f"top_p: must be above 0 and at most 1 (got {cfg.top_p})")
    if not 0 <= cfg.epsilon < 1 or (cfg.epsilon_high is not None and cfg.epsilon_high < 0):
        problems.append(f"epsilon: must be in [0, 1) and epsilon_high 0 or above (got {cfg.epsilon}, "
                        f"{cfg.epsilon_high})")
    if cfg.batch_tokens is not None:
        problems.append("batch_tokens: a GRPO step is counted in prompts; use --batch-size")
    if cfg.parallel == "fsdp":
        problems.append("parallel: fsdp shards the weights, which the rollouts' engine reads whole; use --parallel ddp")
    if cfg.max_completion_tokens >= cfg.max_length:
        problems.append(f"max_completion_tokens: {cfg.max_completion_tokens} leaves no room for a prompt within "
                        f"--max-length {cfg.max_length}")
    return problems


def global_batch(cfg: TrainConfig, world: int) -> str:
    """What one optimizer step trains on, in words (stated in the log and config.yaml)."""
    procs = f"{world} process{'es' if world > 1 else ''}"
    if cfg.batch_tokens is not None:
        return (f"up to {cfg.batch_tokens * cfg.grad_accum * world} tokens per optimizer step "
                f"(batch_tokens {cfg.batch_tokens} x grad_accum {cfg.grad_accum} x {procs})")
    if cfg.objective == "grpo":
        n = cfg.batch_size * cfg.grad_accum * world
        return (f"{n} prompts x {cfg.num_generations} replies = {n * cfg.num_generations} sampled replies per "
                f"optimizer step (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {procs})")
    unit = "preference pairs" if cfg.objective == "dpo" else "examples"
    return (f"{cfg.batch_size * cfg.grad_accum * world} {unit} per optimizer step "
            f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {procs})")


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
