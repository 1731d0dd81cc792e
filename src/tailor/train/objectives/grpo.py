"""Group Relative Policy Optimization: reinforcement fine-tuning against a grader (OpenAI's RFT).

Each step, every prompt of the step gets --num-generations replies, sampled in `begin` through
tailor's engine with the policy's current weights and graded as they finish (train/rollouts.py).
A reply's advantage is its reward against its group's (the same prompt's replies):
    A = (r - mean_group(r)) / (std_group(r) + 1e-4)      (scale_rewards group; batch: the step's
                                                          std; none: no division)
and every reply token t of sequence i has, with rho = pi(t) / pi_old(t) and the k3 estimator of
the KL to the reference weighed by rho (so that its gradient is the unbiased reverse-KL one even
on-policy, where rho is 1 but not its gradient: DeepSeek-V3.2; TRL's use_bias_correction_kl),
    loss_t = -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta rho (exp(ref - logp) - (ref - logp) - 1)
aggregated by --grpo-loss over the WHOLE step, whatever its split into micro-batches and ranks:
    dapo     sum over the step's reply tokens / their number          (TRL's default)
    grpo     each reply's token mean, summed over replies / replies
    dr_grpo  sum over the step's reply tokens / (replies x --max-completion-tokens)
These are TRL GRPOTrainer's formulas (its _compute_loss and _generate_and_score_completions),
with its log-probs: those of the logits / --temperature, the distribution the replies came from.
pi_old is the policy that sampled the replies: with --num-iterations 1 it is the policy itself
(rho = 1, detached, as TRL does); above 1 each step's replies are trained on for that many
optimizer steps, with pi_old from a forward of the rollout tokens right after sampling, and the
replies are kept in the checkpoint, so a run resumed mid-way trains on the same ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tailor.errors import TailorError
from tailor.train import distributed
from tailor.train.batches import collate
from tailor.train.logprobs import tempered, token_logps
from tailor.train.objectives import Work
from tailor.train.rollouts import Roller, Rollout, seed
from tailor.train.rewards import Score

SUMS = ("loss", "tokens", "sequences", "completion_tokens", "reward", "reward_sq", "kl", "clipped", "truncated",
        "errors", "groups", "zero_std_groups")
_TRAIN, _VALID = 0, 1  # seed streams


class Micro:
    """One micro-batch of rollouts: whole groups (all replies of its prompts), with each reply's
    advantage, and pi_old's and the reference's token log-probs in the batch's target order."""

    def __init__(self, rollouts: list[Rollout], advantages: np.ndarray, groups: int, zero_std: int):
        self.rollouts, self.advantages, self.groups, self.zero_std = rollouts, advantages, groups, zero_std
        self.old: torch.Tensor | None = None
        self.ref: torch.Tensor | None = None

    def state(self) -> dict:
        return {"rollouts": [(r.prompt, r.completion, r.text, r.truncated, r.score.reward, r.score.sub, r.score.error)
                             for r in self.rollouts], "advantages": self.advantages, "groups": self.groups,
                "zero_std": self.zero_std, "old": self.old, "ref": self.ref}

    @classmethod
    def of(cls, state: dict) -> Micro:
        rollouts = [Rollout(p, c, t, tr, Score(r, s, e)) for p, c, t, tr, r, s, e in state["rollouts"]]
        micro = cls(rollouts, state["advantages"], state["groups"], state["zero_std"])
        micro.old, micro.ref = state["old"], state["ref"]
        return micro


class GRPO:
    name = "grpo"

    def __init__(self, session, *, resumed: bool):
        from tailor.train.objectives import reference

        self.session, cfg = session, session.cfg
        self.cfg, self.precision, self.pad_id = cfg, session.precision, session.pad_id
        self.items, self.val = session.data.train, session.data.val
        self.lengths = session.data.lengths
        try:
            tempered(session.parts[1], cfg.temperature)
        except ValueError as exc:
            raise TailorError(f"temperature: {exc}") from None
        self.reference = reference.tokens(session, cfg.temperature) if cfg.beta else None
        self.roller: Roller | None = None  # the engine is built at the first rollout
        self.buffer: tuple[tuple[int, int], Work] | None = None  # ((epoch, index) that sampled it, its work)
        self.repeat = cfg.num_iterations  # the batch plan takes each step this many times
        self.keys = _sub_graders(cfg)
        self.sums = SUMS + tuple(f"sub_{k}" for k in self.keys)

    # ---- the loop's side ----------------------------------------------------------------

    def begin(self, step) -> Work:
        pos = self.session.position
        at = (pos.epoch, pos.index - pos.index % self.repeat)  # the step of this cycle that samples
        if self.buffer is not None and self.buffer[0] == at:
            return self.buffer[1]
        mine = list(range(distributed.rank(), len(step), distributed.world()))
        prompts = [(m, i, j) for m in mine for i in step[m] for j in range(self.cfg.num_generations)]
        done = self._roller().roll([self.items[i] for _, i, _ in prompts],
                                   [seed(self.cfg.seed, _TRAIN, pos.epoch, i, j) for _, i, j in prompts])
        by_micro = {m: [r for (mm, _, _), r in zip(prompts, done) if mm == m] for m in mine}
        work = self.work(step, by_micro)
        self.buffer = (at, work)
        return work

    def work(self, step, by_micro: dict[int, list[Rollout]]) -> Work:
        """The step's Work from this rank's rollouts (micro-batch index -> its prompts' replies,
        group by group): advantages, pi_old and reference log-probs, the whole step's denominators."""
        g, c = self.cfg.num_generations, self.cfg
        rewards = np.array([r.score.reward for rs in by_micro.values() for r in rs], dtype=np.float64)
        batch_std = None
        if c.scale_rewards == "batch":  # TRL: the std over the whole step's rewards, every rank's
            s, s2, n = distributed.total(float(rewards.sum()), float((rewards ** 2).sum()), float(len(rewards)))
            batch_std = math.sqrt(max(0.0, (s2 - s * s / n) / max(n - 1, 1)))
        micro = list(step)
        for m, rollouts in by_micro.items():
            adv, zero = advantages(np.array([r.score.reward for r in rollouts]), g, c.scale_rewards, batch_std)
            micro[m] = Micro(rollouts, adv, len(rollouts) // g, zero)
            self._old_and_reference(micro[m])
        local = sum(len(r.completion) for rs in by_micro.values() for r in rs)
        (tokens,) = distributed.total(float(local))
        return Work(micro, {"sequences": g * sum(len(m) for m in step), "tokens": tokens,
                            "max_tokens": c.max_completion_tokens})

    def loss(self, body, head, micro: Micro, work: Work):
        batch = self._collate(micro, body)
        logp = token_logps(body, tempered(head, self.cfg.temperature), batch, self.precision.compute)
        seq = batch.target_seq.to(logp.device)
        old = micro.old.to(logp.device) if micro.old is not None else logp.detach()
        ref = micro.ref.to(logp.device) if micro.ref is not None else None
        adv = torch.as_tensor(micro.advantages, dtype=torch.float32, device=logp.device)[seq]
        t = token_terms(logp, old, ref, adv, self.cfg)
        loss = aggregate(t["loss"], seq, len(micro.rollouts), work.norm, self.cfg.grpo_loss)
        return loss, {"loss": loss.item(), "tokens": batch.tokens, "completion_tokens": batch.trained,
                      "kl": float(t["kl"].sum()), "clipped": float(t["clipped"].sum()), **_reward_sums(micro)}

    def record(self, sums, work: Work) -> dict:
        out = metrics(sums, self.keys, kl=self.cfg.beta > 0)
        pos = self.session.position  # already moved past this step
        sampled = self.buffer is not None and self.buffer[0] == (pos.epoch, pos.index - 1)
        timing = self.roller.timing if sampled and self.roller is not None else {}
        return {**out, **timing, "prompts": int(sums["groups"])}

    def validate(self, model) -> dict:
        """valid_reward_mean: --eval-generations replies to every validation prompt, sampled as in
        training (the same seeds at every evaluation, so evaluations differ by the policy only)."""
        if not self.val:
            return {}
        g = self.cfg.eval_generations
        prompts = [(i, j) for i in range(len(self.val)) for j in range(g)]
        done = self._roller().roll([self.val[i] for i, _ in prompts], [seed(self.cfg.seed, _VALID, 0, i, j)
                                                                        for i, j in prompts])
        rewards = np.array([r.score.reward for r in done])
        out = {"val_reward_mean": float(rewards.mean()), "val_reward_std": float(rewards.std(ddof=1)) if len(done) > 1
               else 0.0, "val_completion_length": float(np.mean([len(r.completion) for r in done])),
               "val_grader_errors": float(np.mean([r.score.error is not None for r in done]))}
        for k in self.keys:
            out[f"val_reward_{k}_mean"] = float(np.mean([r.score.sub.get(k, 0.0) for r in done]))
        shown = [(i, r) for (i, j), r in zip(prompts, done) if j == 0][:self.cfg.eval_samples]
        out["samples"] = [{"prompt": self.val[i].messages[-1]["content"], "reference": _reference(self.val[i].item),
                           "answer": r.text.strip(), "reward": r.score.reward} for i, r in shown]
        return out | {"val_prompts": len(self.val)}

    # ---- what a checkpoint keeps (replies reused by --num-iterations) ---------------------

    def state(self) -> dict | None:
        if self.buffer is None or self.cfg.num_iterations == 1:
            return None
        at, work = self.buffer
        return {"at": at, "norm": work.norm,
                "micro": {m: x.state() for m, x in enumerate(work.micro) if isinstance(x, Micro)}}

    def restore(self, state: dict | None, plan) -> None:
        """The replies a checkpoint kept: the next steps train on them again (plan(epoch): the
        batch plan of an epoch)."""
        if not state:
            return
        epoch, index = state["at"]
        micro = list(plan(epoch)[index])
        for m, s in state["micro"].items():
            micro[m] = Micro.of(s)
        self.buffer = ((epoch, index), Work(micro, state["norm"]))

    # ---- helpers -----------------------------------------------------------------------------

    def _roller(self) -> Roller:
        if self.roller is None:
            s = self.session
            longest = max(len(p) for p in self.items + self.val)
            self.roller = Roller(s.model, s.tokenizer, self.cfg, stop_ids=s.data.prepared.stop_token_ids,
                                 max_len=longest + self.cfg.max_completion_tokens + 1, dtype=self.precision.compute,
                                 say=s.progress.say if hasattr(s, "progress") else s._say)
        return self.roller

    def _collate(self, micro: Micro, body):
        """All the micro-batch's sequences in one row for a body that attends per sequence in
        packed rows (the fused one), else right-padded rows."""
        seqs = micro.rollouts
        if getattr(body, "packs_rows", False):
            return collate(seqs, list(range(len(seqs))), batching="pack", max_length=sum(map(len, seqs)),
                           pad_id=self.pad_id)
        return collate(seqs, list(range(len(seqs))), batching="group", max_length=max(map(len, seqs)),
                       pad_id=self.pad_id)

    def _old_and_reference(self, micro: Micro) -> None:
        """pi_old (with --num-iterations above 1) and the reference (with --beta above 0), each a
        forward of the rollout tokens without gradients, right after sampling."""
        if self.cfg.num_iterations == 1 and self.reference is None:
            return
        s = self.session
        batch = self._collate(micro, s.parts[0])
        if self.cfg.num_iterations > 1:
            was = s.model.training
            s.model.eval()
            try:
                with torch.no_grad(), self.precision.autocast():
                    micro.old = token_logps(s.parts[0], tempered(s.parts[1], self.cfg.temperature), batch,
                                            self.precision.compute).float().cpu()
            finally:
                s.model.train(was)
        if self.reference is not None:
            micro.ref = self.reference(batch, s.parts).float().cpu()

    def close(self) -> None:
        if self.roller is not None:
            self.roller.close()


def _reward_sums(micro: Micro) -> dict[str, float]:
    r = np.array([x.score.reward for x in micro.rollouts], dtype=np.float64)
    out = {"sequences": len(r), "reward": float(r.sum()), "reward_sq": float((r ** 2).sum()),
           "truncated": sum(x.truncated for x in micro.rollouts), "groups": micro.groups,
           "zero_std_groups": micro.zero_std, "errors": sum(x.score.error is not None for x in micro.rollouts)}
    for x in micro.rollouts:
        for k, v in x.score.sub.items():
            out[f"sub_{k}"] = out.get(f"sub_{k}", 0.0) + v
    return out


def _sub_graders(cfg) -> tuple[str, ...]:
    """A multi grader's keys: each one's mean reward is a metric of its own."""
    import json

    grader = json.loads(cfg.grader) if cfg.grader else None
    return tuple(grader["graders"]) if grader and grader["type"] == "multi" else ()


def _reference(item: dict) -> str:
    """What the grader compares a reply with: the prompt line's other keys."""
    import json

    rest = {k: v for k, v in item.items() if k not in ("messages", "tools", "parallel_tool_calls")}
    return json.dumps(rest, ensure_ascii=False)


# ---- the maths, on tensors ----------------------------------------------------------------------


def advantages(rewards: np.ndarray, g: int, scale: str, batch_std: float | None = None) -> tuple[np.ndarray, int]:
    """Each reply's advantage over its group of `g` (consecutive rewards), and how many groups
    have all rewards equal (they teach nothing: their advantages are 0)."""
    groups = rewards.reshape(-1, g)
    mean = groups.mean(1, keepdims=True)
    std = groups.std(1, ddof=1, keepdims=True)
    adv = groups - mean
    if scale == "group":
        adv = adv / (std + 1e-4)
    elif scale == "batch":
        adv = adv / (batch_std + 1e-4)
    return adv.reshape(-1), int(np.isclose(std[:, 0], 0.0).sum())


def token_terms(logp, old, ref, adv, cfg) -> dict[str, torch.Tensor]:
    """Per reply token: the clipped surrogate loss (+ beta x KL), the KL, whether it was clipped."""
    ratio = torch.exp(logp - old)
    high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    clipped_ratio = torch.clamp(ratio, 1 - cfg.epsilon, 1 + high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = torch.zeros_like(logp)
    if ref is not None:  # k3, times the ratio (TRL's use_bias_correction_kl, on by default in 1.16)
        kl = (torch.exp(ref - logp) - (ref - logp) - 1) * ratio
        loss = loss + cfg.beta * kl
    clipped = ((ratio < 1 - cfg.epsilon) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
    return {"loss": loss, "kl": kl.detach(), "clipped": clipped.float()}


def aggregate(token_loss, seq, n_seqs: int, norm: dict, kind: str) -> torch.Tensor:
    """This micro-batch's share of the step's loss (see the module doc), so that the micro-batch
    losses of every rank sum to the step's."""
    if kind == "grpo":
        counts = torch.bincount(seq, minlength=n_seqs).clamp(min=1).to(token_loss.dtype)
        return (token_loss / counts[seq]).sum() / norm["sequences"]
    if kind == "dr_grpo":
        return token_loss.sum() / (norm["sequences"] * norm["max_tokens"])
    return token_loss.sum() / max(norm["tokens"], 1.0)


def metrics(sums: dict, keys: tuple[str, ...], *, kl: bool) -> dict:
    n, t = max(sums["sequences"], 1), max(sums["completion_tokens"], 1)
    var = (sums["reward_sq"] - sums["reward"] ** 2 / n) / max(n - 1, 1)
    out = {"loss": sums["loss"], "reward_mean": sums["reward"] / n, "reward_std": math.sqrt(max(var, 0.0)),
           **{f"reward_{k}_mean": sums[f"sub_{k}"] / n for k in keys},
           "completion_length": sums["completion_tokens"] / n, "clip_fraction": sums["clipped"] / t,
           "frac_reward_zero_std": sums["zero_std_groups"] / max(sums["groups"], 1),
           "truncated": sums["truncated"] / n, "grader_errors": sums["errors"] / n}
    if kl:
        out["kl"] = sums["kl"] / t
    return out
