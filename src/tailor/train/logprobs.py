"""Per-token log-probabilities of the trained targets, through the vocabulary projection in
chunks, differentiable: what preference objectives (DPO) need where cross-entropy (loss.py)
sums everything at once.

A sequence's log-probability weighs its tokens by a coefficient known only once every token of
the batch is seen (DPO's sigmoid of the whole pair's margin), so the gradient cannot be formed
in the forward pass as loss.py does. Instead the forward keeps only each row's logsumexp, and
the backward recomputes each chunk's logits once, with the upstream gradient in hand: still
never more than one chunk of logits in memory, and for a frozen head (LoRA) no more matmuls
than loss.py's (logits, then d/dhidden).
"""

from __future__ import annotations

import torch

from tailor.logits import LogitTransform
from tailor.train.loss import Head, _chunk_rows, trained_hidden


class _LinearLogProbs(torch.autograd.Function):
    """log softmax(f(hidden @ W.T + b))[target], row by row; f is the model's logit transform."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, compute_dtype, transform):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        w = weight.to(compute_dtype)
        step = _chunk_rows(weight.shape[0])
        for s in range(0, hidden.shape[0], step):
            logits = _logits(hidden[s:s + step], w, bias, compute_dtype)
            transform.apply_(logits, slope=False)
            lse[s:s + step] = torch.logsumexp(logits, dim=-1)
            out[s:s + step] = logits.gather(1, targets[s:s + step, None])[:, 0] - lse[s:s + step]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.compute_dtype, ctx.transform = compute_dtype, transform
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        dtype, transform = ctx.compute_dtype, ctx.transform
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        w = weight.to(dtype)
        step = _chunk_rows(weight.shape[0])
        for s in range(0, hidden.shape[0], step):
            h, t = hidden[s:s + step].to(dtype), targets[s:s + step]
            logits = _logits(h, w, bias, dtype)
            slope = transform.apply_(logits, slope=True)
            # d logp / d logits = onehot - softmax, times the upstream gradient of each row
            g = logits.sub_(lse[s:s + step, None]).exp_().neg_()
            g[torch.arange(len(t), device=g.device), t] += 1
            g.mul_(grad_out[s:s + step, None])
            if not transform.identity:  # chain rule through f
                g.mul_(slope)
            if need_b:
                grad_b += g.sum(0)
            g = g.to(dtype)
            if need_h:
                grad_h[s:s + step] = (g @ w).to(hidden.dtype)
            if need_w:
                grad_w += (g.T @ h).float()
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def _logits(h, w, bias, dtype):
    logits = (h.to(dtype) @ w.T).float()
    if bias is not None:
        logits += bias.float()
    return logits


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    bias: torch.Tensor | None = None, compute_dtype: torch.dtype | None = None,
                    transform: LogitTransform = LogitTransform()) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for hidden [N, H], as an fp32 tensor [N]."""
    if hidden.shape[0] == 0:
        return hidden.sum(-1).float() * 0.0
    return _LinearLogProbs.apply(hidden, weight, bias, targets, compute_dtype or hidden.dtype, transform)


def token_logps(body, head: Head, batch, compute_dtype) -> torch.Tensor:
    """The log-probability of every trained target of `batch`, in batch.target_index order."""
    weight = head.weight
    picked = trained_hidden(body, batch, weight.device)
    return linear_logprobs(picked, weight, batch.target_ids.to(weight.device), head.bias, compute_dtype,
                           head.transform)


def tempered(head: Head, temperature: float) -> Head:
    """The head whose log-probs are those of the logits / temperature: what a reply sampled at
    that temperature was drawn from (GRPO's policy, as TRL computes it). A soft-capped head
    divides after its cap, which LogitTransform does not express: refused unless temperature 1."""
    import dataclasses

    if temperature == 1.0:
        return head
    t = head.transform
    if t.softcap is not None:
        raise ValueError(f"this model soft-caps its logits; GRPO samples it at temperature 1 only (got {temperature})")
    return dataclasses.replace(head, transform=t._replace(scale=t.scale / temperature))


def sequence_sums(values: torch.Tensor, batch, n: int) -> torch.Tensor:
    """Per-sequence sums of per-target `values` [N] -> [n] (sequence k: the k-th collated example)."""
    seq = batch.target_seq.to(values.device)
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, seq, values)
