"""What a tenant may ask of the fine-tuning service, set by the operator.

Tenants (API keys other than the operator's own machine) are untrusted, so a job's `tailor`
options are an allowlist: training knobs only, each within a bound the operator can change.
Anything that names a path, a device, a process count, the network or a credential stays the
operator's unless `--allow-option KEY` opens it. A refused option is a 400 that names
`tailor.<key>` and says why; it never echoes what exists on the server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tailor.service.errors import invalid

# Training knobs a tenant may set (the job itself sets data, model, epochs, batch size, lr, seed).
TENANT_KNOBS = frozenset({
    "method", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "dora", "rslora",
    "max_length", "truncate", "batching", "batch_tokens", "grad_accum",
    "schedule", "warmup", "min_lr_ratio", "weight_decay", "max_grad_norm", "dtype",
    "log_every", "eval_every", "eval_samples", "sample_max_tokens", "val_split", "val_max",
    "save_every", "keep_checkpoints", "max_steps", "gradient_checkpointing", "chat_template",
    "dpo_loss", "rpo_alpha", "dpo_reference",  # DPO's own (objective and beta come from method.dpo)
    # reinforcement's own (the grader, evaluations and objective come from method.reinforcement)
    "num_generations", "max_completion_tokens", "temperature", "top_p", "beta", "grpo_loss", "epsilon",
    "epsilon_high", "num_iterations", "scale_rewards",
})
# Operator-only options, with the reason a tenant is told.
OPERATOR_ONLY = {
    "push_to_hub": "it pushes with a Hugging Face token; the operator enables pushes per project (see the keys file)",
    "nproc": "it starts training processes on the server",
    "parallel": "it sets how the server's processes share the work",
    "device": "it picks the server's hardware",
    "compile": "it changes how the server compiles code",
    "fused": "it picks the server's training kernels",
    "qlora": "it needs the server's CUDA device",
    "report_to": "trackers use the operator's credentials; use the job's `integrations`",
    "reward": "it imports server code; use the reinforcement method's grader",
    "judge_url": "it makes the training process call a server",
}
NAMED_TEMPLATES = ("chatml", "llama3", "alpaca")


@dataclass
class Policy:
    """The operator's bounds on tenants. Every field is also a `tailor serve` flag."""

    max_job_steps: int = 20000
    """Most optimizer steps one fine-tuning job may run; a job past it ends failed (job_step_limit_exceeded)."""
    max_job_hours: float = 24.0
    """Most hours one job may train (over its pauses and restarts); past it, failed (job_time_limit_exceeded)."""
    max_lora_r: int = 256
    """Largest LoRA rank a tenant may ask for (tailor.lora_r)."""
    max_keep_checkpoints: int = 5
    """Most checkpoints a job may keep (tailor.keep_checkpoints); each kept one is a servable model."""
    max_grad_accum: int = 64
    """Largest gradient accumulation a tenant may ask for (tailor.grad_accum)."""
    max_eval_samples: int = 16
    """Most answers generated per evaluation (tailor.eval_samples)."""
    max_sample_tokens: int = 1024
    """Most tokens per generated evaluation answer (tailor.sample_max_tokens)."""
    max_num_generations: int = 64
    """Most replies a reinforcement job samples per prompt (tailor.num_generations x compute_multiplier)."""
    max_completion_tokens: int = 2048
    """Most tokens per sampled reply in a reinforcement job (tailor.max_completion_tokens)."""
    max_template_chars: int = 65536
    """Longest inline chat template a tenant may give (tailor.chat_template as Jinja text)."""
    max_project_jobs: int = 8
    """Jobs one project may have queued, running or paused at once; more is HTTP 429."""
    max_project_files: int = 1000
    """Files one project may store; more is HTTP 400 (quota_exceeded)."""
    max_project_storage_mb: int = 10240
    """Megabytes of files one project may store; more is HTTP 400 (quota_exceeded)."""
    allow_option: list[str] | None = None
    """Open an operator-only job option to every tenant (repeat per KEY), e.g. --allow-option nproc."""
    allow_hub_models: bool = False
    """Let tenants fine-tune hub ids (owner/name) besides the served models and their own fine-tunes."""
    push_tokens: dict | None = None
    """project -> its own Hub token (from the keys file's hub_token= field): only those projects may push."""

    def allowed(self, key: str) -> bool:
        return key in TENANT_KNOBS or key in (self.allow_option or ())

    def can_push(self, project: str) -> bool:
        """Push only with the project's own token: the server's token is never a tenant's."""
        return project in (self.push_tokens or {})


def check_options(knobs: dict, policy: Policy, project: str) -> None:
    """400 for the first option this tenant may not set, or whose value is past its bound.
    Values are checked again by TrainConfig itself (types, ranges); this adds the tenant's rules."""
    from tailor.train.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in knobs.items():
        k = key.replace("-", "_")
        if k not in known:
            options = ", ".join(sorted(k for k in known if policy.allowed(k)))
            raise invalid(f"tailor.{key} is not a tailor option. The options tenants may set here: {options}.",
                          f"tailor.{key}", "unknown_option")
        if k == "push_to_hub" and value is not None:
            if not policy.can_push(project):
                raise invalid("tailor.push_to_hub is off for this project: a job pushes only with the project's own "
                              "Hugging Face token, which the operator sets in the keys file (`KEY NAME "
                              "hub_token=hf_...`).", "tailor.push_to_hub", "option_not_allowed")
            continue
        if not policy.allowed(k):
            why = OPERATOR_ONLY.get(k, "it is not one of the training options tenants may set")
            raise invalid(f"tailor.{key} is an operator-only option on this server: {why}. The operator can open it "
                          f"with `tailor serve --allow-option {k}`.", f"tailor.{key}", "option_not_allowed")
        if k == "chat_template" and k not in (policy.allow_option or ()):
            _check_template(value, policy)
        if k == "dpo_reference" and value != "cached" and k not in (policy.allow_option or ()):
            raise invalid("tailor.dpo_reference may only be `cached` here: `copy` holds a second copy of the model "
                          "in memory for the whole job. The operator can open it with `tailor serve --allow-option "
                          "dpo_reference`.", "tailor.dpo_reference", "option_not_allowed")


def check_bounds(cfg, knobs: dict, policy: Policy, context: int | None) -> None:
    """400 for the first option the tenant gave whose value (as the TrainConfig `cfg` converted
    it: "1000" is 1000) is past the operator's bound, or max_length past the model's context."""
    given = {k.replace("-", "_"): k for k in knobs}
    bounds = _bounds(policy)
    if context:  # longer rows train positions the model never saw, with memory nobody planned for
        bounds["max_length"] = (context, "model's context length")
    for k, (limit, what) in bounds.items():
        value = getattr(cfg, k, None)
        if k in given and value is not None and value > limit:
            raise invalid(f"tailor.{given[k]} is {value}; this server allows at most {limit} (the {what}"
                          f"{'' if what.startswith('model') else ' of the operator'}).", f"tailor.{given[k]}",
                          "option_out_of_bounds")


def _bounds(policy: Policy) -> dict[str, tuple[float, str]]:
    return {"max_steps": (policy.max_job_steps, "--max-job-steps"),
            "lora_r": (policy.max_lora_r, "--max-lora-r"),
            "keep_checkpoints": (policy.max_keep_checkpoints, "--max-keep-checkpoints"),
            "grad_accum": (policy.max_grad_accum, "--max-grad-accum"),
            "eval_samples": (policy.max_eval_samples, "--max-eval-samples"),
            "sample_max_tokens": (policy.max_sample_tokens, "--max-sample-tokens"),
            "val_max": (10000, "limit"),
            "rpo_alpha": (10.0, "limit"),
            "num_generations": (policy.max_num_generations, "--max-num-generations"),
            "max_completion_tokens": (policy.max_completion_tokens, "--max-completion-tokens"),
            "num_iterations": (16, "limit"), "temperature": (2.0, "limit"), "beta": (10.0, "limit"),
            "epsilon_high": (10.0, "limit")}


def _check_template(value, policy: Policy) -> None:
    """A tenant's template is a named one or the Jinja text itself, never a file on the server."""
    if value is None or value in NAMED_TEMPLATES:
        return
    if not isinstance(value, str) or not is_inline_template(value):
        raise invalid("tailor.chat_template must be chatml, llama3, alpaca, or the template's Jinja text itself "
                      "(a file on the server is the operator's to choose).", "tailor.chat_template",
                      "option_not_allowed")
    if len(value) > policy.max_template_chars:
        raise invalid(f"tailor.chat_template is {len(value)} characters; this server allows at most "
                      f"{policy.max_template_chars}.", "tailor.chat_template", "option_out_of_bounds")


def is_inline_template(text: str) -> bool:
    """Jinja text rather than a name or a path (data.templates reads it the same way)."""
    return "{{" in text or "{%" in text


def policy_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(Policy)} - {"push_tokens"}
