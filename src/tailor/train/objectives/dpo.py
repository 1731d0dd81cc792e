"""Direct Preference Optimization: each item is a pair (a prompt with a chosen and a rejected
reply), and the loss raises the policy's log-probability of the chosen reply over the rejected
one, relative to a frozen reference model (see reference.py).

Per pair, with log pi(y|x) the SUM of the reply's token log-probabilities (its end-of-turn
marker included; the prompt is context) and d = log pi_policy - log pi_reference:
    sigmoid (default)   -log sigmoid(beta * (d_chosen - d_rejected))          (the DPO paper)
    ipo                 ((d_chosen/|y_c| - d_rejected/|y_r|) - 1/(2 beta))^2  (IPO, per token)
plus, with rpo_alpha, rpo_alpha x the chosen replies' mean token NLL (RPO). The step's loss is
the mean over its pairs (and the NLL the mean over its chosen tokens), whatever the split into
micro-batches and ranks. These are TRL DPOTrainer's formulas; its logged metrics are here under
the same names with `_` for `/`: rewards_chosen = beta * d_chosen (mean over pairs), and so on.

Chosen and rejected share one forward: a micro-batch of n pairs is one batch of 2n sequences,
chosen first (packed into one row, without padding, for the fused body).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tailor.train.batches import collate, trained_count
from tailor.train.logprobs import sequence_sums, token_logps
from tailor.train.objectives import Work
from tailor.train.objectives import reference as references

METRICS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "logps_chosen",
           "logps_rejected")


class DPO:
    name = "dpo"
    sums = ("loss", "nll", "rewards_chosen", "rewards_rejected", "rewards_accuracy", "logps_chosen",
            "logps_rejected", "tokens", "trained")

    def __init__(self, session, *, resumed: bool):
        self.cfg, self.precision, self.pad_id = session.cfg, session.precision, session.pad_id
        self.items, self.val = session.data.train, session.data.val
        self.lengths = session.data.lengths
        self.reference = references.make(session, resumed=resumed)

    # ---- the loop's side ----------------------------------------------------------------

    def begin(self, step) -> Work:
        pairs = [self.items[i] for micro in step for i in micro]
        return Work(step, {"pairs": len(pairs), "chosen_tokens": sum(trained_count(p.chosen.labels) for p in pairs)})

    def loss(self, body, head, micro, work: Work):
        batch = collate_pairs([self.items[i] for i in micro], self.cfg, self.pad_id, body)
        n = len(micro)
        policy = sequence_sums(token_logps(body, head, batch, self.precision.compute), batch, 2 * n)
        ref = self.reference("train", micro, batch, (body, head))
        t = pair_terms(policy, ref.to(policy.device), batch, n, self.cfg)
        loss = t["loss"].sum() / work.norm["pairs"]
        if self.cfg.rpo_alpha:
            loss = loss + self.cfg.rpo_alpha * t["nll"].sum() / max(work.norm["chosen_tokens"], 1)
        return loss, {**sums_of(t), "tokens": batch.tokens, "trained": batch.trained}

    def record(self, sums, work: Work) -> dict:
        out = metrics(sums, work.norm["pairs"], work.norm["chosen_tokens"], self.cfg.rpo_alpha)
        return {**out, "pairs": work.norm["pairs"], "trained_tokens": int(sums["trained"])}

    def validate(self, model) -> dict:
        """The same metrics on the validation pairs (eval mode, no gradients), named val_*."""
        if not self.val:
            return {}
        from tailor.train.loss import decoder_parts

        parts = decoder_parts(model, fused=self.cfg.fused)
        order = sorted(range(len(self.val)), key=lambda i: len(self.val[i]))
        sums = dict.fromkeys(self.sums, 0.0)
        chosen_tokens = sum(trained_count(p.chosen.labels) for p in self.val)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for s in range(0, len(order), self.cfg.batch_size):
                    idx = order[s:s + self.cfg.batch_size]
                    batch = collate_pairs([self.val[i] for i in idx], self.cfg, self.pad_id, parts[0])
                    with self.precision.autocast():
                        policy = sequence_sums(token_logps(*parts, batch, self.precision.compute), batch, 2 * len(idx))
                    ref = self.reference("val", idx, batch, parts, model=model)
                    for k, v in sums_of(pair_terms(policy, ref.to(policy.device), batch, len(idx), self.cfg)).items():
                        sums[k] += v
        finally:
            model.train(was_training)
        out = metrics(sums, len(self.val), chosen_tokens, self.cfg.rpo_alpha)
        return {f"val_{k}": v for k, v in out.items()} | {"val_pairs": len(self.val)}


# ---- the maths, on tensors ------------------------------------------------------------------


def collate_pairs(pairs, cfg, pad_id, body=None):
    """n pairs -> one batch of 2n sequences: the chosen ones, then the rejected ones. A chosen
    reply is often much shorter than its rejected one, so right-padding them to one length
    wastes much of the forward; a body that attends per sequence in packed rows (the fused one)
    gets them all in ONE row, without padding."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    if getattr(body, "packs_rows", False):
        return collate(seqs, list(range(len(seqs))), batching="pack", max_length=sum(len(x) for x in seqs),
                       pad_id=pad_id)
    return collate(seqs, list(range(len(seqs))), batching=cfg.batching, max_length=cfg.max_length, pad_id=pad_id)


def pair_terms(policy: torch.Tensor, ref: torch.Tensor, batch, n: int, cfg) -> dict[str, torch.Tensor]:
    """Per pair: the loss, the chosen reply's NLL, the rewards and log-probs; `policy` and `ref`
    are [2n] sequence log-probs, chosen first."""
    d = policy - ref
    dc, dr = d[:n], d[n:]
    if cfg.dpo_loss == "ipo":
        counts = torch.bincount(batch.target_seq, minlength=2 * n).to(d.device).clamp(min=1)
        loss = (dc / counts[:n] - dr / counts[n:] - 1 / (2 * cfg.beta)) ** 2
    else:
        loss = -F.logsigmoid(cfg.beta * (dc - dr))
    rc, rr = cfg.beta * dc.detach(), cfg.beta * dr.detach()
    return {"loss": loss, "nll": -policy[:n], "rewards_chosen": rc, "rewards_rejected": rr,
            "rewards_accuracy": (rc > rr).float(), "logps_chosen": policy[:n].detach(),
            "logps_rejected": policy[n:].detach()}


def sums_of(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach().sum()) for k, v in terms.items()}


def metrics(sums: dict[str, float], pairs: int, chosen_tokens: int, rpo_alpha: float) -> dict:
    """Means over the pairs (the NLL over the chosen tokens) of summed terms."""
    n = max(pairs, 1)
    mean = {k: sums[k] / n for k in ("rewards_chosen", "rewards_rejected", "rewards_accuracy", "logps_chosen",
                                     "logps_rejected")}
    loss = sums["loss"] / n + (rpo_alpha * sums["nll"] / max(chosen_tokens, 1) if rpo_alpha else 0.0)
    out = {"loss": loss, **mean, "rewards_margin": mean["rewards_chosen"] - mean["rewards_rejected"]}
    if rpo_alpha:
        out["nll_chosen"] = sums["nll"] / max(chosen_tokens, 1)
    return {k: out[k] for k in ("loss", *METRICS, *(["nll_chosen"] if rpo_alpha else []))}
