"""Cross-entropy over trained positions only, through the vocabulary projection in chunks.

The model body gives hidden states for every position; only the positions whose next token is
trained are gathered, and the lm_head matmul + softmax run over those in chunks of a few hundred
rows. The gradient of each chunk is computed right away (softmax minus one-hot), so neither the
forward nor the backward pass ever holds more than one chunk of logits: a 49k vocabulary costs
~100 MB, not rows x length x 49k floats.

The model's own logit transform (soft-capping, scaling: see tailor.logits) is applied to each
chunk as its forward does, and the gradient goes through it by the chain rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tailor.errors import TailorError
from tailor.logits import LogitTransform

# Rows of logits per chunk: chunk x vocab fp32 values, ~100 MB for a 49k vocabulary.
_CHUNK_ELEMENTS = 1 << 25


def _chunk_rows(vocab: int) -> int:
    return max(16, _CHUNK_ELEMENTS // vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(f(hidden_i @ W.T + b), target_i), with gradients computed chunk by chunk in
    forward; f is the model's logit transform."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, compute_dtype, accuracy=True, transform=LogitTransform()):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        step = _chunk_rows(weight.shape[0])
        for s in range(0, hidden.shape[0], step):
            h = hidden[s:s + step].to(compute_dtype)
            t = targets[s:s + step]
            logits = (h @ w.T).float()
            if bias is not None:
                logits += bias.float()
            slope = transform.apply_(logits, slope=need_h or need_w or need_b)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
            if accuracy:  # an argmax over the vocabulary: only evaluation reports it
                correct += (logits.argmax(-1) == t).sum()
            if need_h or need_w or need_b:
                # d CE / d logits = softmax - onehot, computed in place over the logits buffer
                g = logits.sub_(lse[:, None]).exp_()
                g[torch.arange(len(t), device=g.device), t] -= 1
                if not transform.identity:  # chain rule through f: times df/dlogits
                    g.mul_(slope)
                if need_b:
                    grad_b += g.sum(0)
                g = g.to(compute_dtype)
                if need_h:
                    grad_h[s:s + step] = (g @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (g.T @ h).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.have = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):
        saved = list(ctx.saved_tensors)
        grads = [(saved.pop(0) * grad_total).to(dtype) if have else None
                 for have, dtype in zip(ctx.have, ctx.dtypes)]
        return (*grads, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, compute_dtype: torch.dtype | None = None,
                         accuracy: bool = True, transform: LogitTransform = LogitTransform()):
    """(sum of token losses, number of correct argmax predictions) for hidden [N, H], targets [N];
    with accuracy=False the count is skipped and returned as 0. `transform` is what the model
    does to its logits (LogitTransform.of(config))."""
    compute_dtype = compute_dtype or hidden.dtype
    if hidden.shape[0] == 0:
        zero = hidden.sum() * 0.0
        return zero.float(), torch.zeros((), dtype=torch.long)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, compute_dtype, accuracy, transform)
    with torch.no_grad():
        return _LinearCrossEntropy.forward(_NoGradCtx(), hidden, weight, bias, targets, compute_dtype, accuracy,
                                           transform)


class _NoGradCtx:
    needs_input_grad = (False,) * 7

    def save_for_backward(self, *args):
        pass

    def mark_non_differentiable(self, *args):
        pass


@dataclass
class Head:
    """The vocabulary projection and the model's transform of its logits."""

    module: torch.nn.Module  # nn.Linear, or PEFT's TrainableTokensWrapper around it
    transform: LogitTransform

    @property
    def weight(self) -> torch.Tensor:
        # PEFT's wrapper returns the base rows with the trained new-token rows copied in
        # (differentiably), so the loss sees, and trains, the adapted head; under PEFT's
        # disable_adapter() (DPO's reference) the base rows alone, as the wrapper's forward does.
        tokens = getattr(self.module, "token_adapter", None)
        if tokens is not None and tokens.disable_adapters:
            return tokens.base_layer.weight
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)


def decoder_parts(model, fused: bool = True):
    """(body, Head) of a causal LM, also through a PEFT wrapper: the body returns hidden states.
    With `fused`, the body of a Llama-family model is tailor's fused forward (tailor.train.fused)."""
    from tailor.train import fused as fused_body

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder()
    head = Head(base.get_output_embeddings(), LogitTransform.of(base.config))
    if not getattr(base, "_tailor_head_checked", False):
        check_head(model, body, head)
        base._tailor_head_checked = True
    return (fused and fused_body.wrap(model, body)) or body, head


def check_head(model, body, head: Head) -> None:
    """Refuse a model whose logits the chunked loss would not reproduce.

    The loss applies the transforms tailor.logits knows; a head that does something else (a
    learned per-token scale, a new family's convention) would otherwise be trained, silently, on
    logits that inference never produces. Costs one forward of a few tokens, in eval mode.
    """
    weight = head.weight
    ids = torch.arange(min(8, weight.shape[0]), device=weight.device)[None]
    # a LoRA base in bf16 with fp32 adapters only runs under autocast, as training runs it
    low = weight.dtype in (torch.bfloat16, torch.float16)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(weight.device.type, dtype=weight.dtype, enabled=low):
            want = model(input_ids=ids, use_cache=False).logits.float()
            out = body(input_ids=ids, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            got = torch.nn.functional.linear(hidden, weight.to(hidden.dtype), head.bias).float()
            head.transform.apply_(got, slope=False)
    finally:
        model.train(was_training)
    err, size = float((got - want).abs().max()), float(want.abs().max())
    if not err <= 0.03 * size + 1e-3:  # bf16 rounds each of a few steps by up to 0.4%
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise TailorError(f"Cannot train this {kind} model: its output layer does something to the logits that "
                          f"tailor's training loss does not reproduce (max difference {err:.3g} on logits up to "
                          f"{size:.3g}; the loss knows {head.transform}). Use a model family tailor supports.")


def trained_hidden(body, batch, device) -> torch.Tensor:
    """The body's final hidden states at the positions whose next token is trained [N, hidden]."""
    out = body(input_ids=batch.input_ids.to(device),
               position_ids=None if batch.position_ids is None else batch.position_ids.to(device),
               use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_index.to(device))


def batch_loss(body, head: Head, batch, compute_dtype, *, accuracy: bool = True):
    """(sum of token losses, correct predictions) for one micro-batch; the caller divides."""
    weight = head.weight
    picked = trained_hidden(body, batch, weight.device)
    return linear_cross_entropy(picked, weight, batch.target_ids.to(weight.device), head.bias, compute_dtype,
                                accuracy, head.transform)
