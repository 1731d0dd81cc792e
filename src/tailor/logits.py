"""What a causal LM does to its logits after the vocabulary projection, read from its config.

Some families change the logits before the softmax: Cohere multiplies them by `logit_scale`,
Granite divides them by `logits_scaling`, Gemma 2 and 3 soft-cap them to
`final_logit_softcapping * tanh(logits / final_logit_softcapping)`. Training's chunked loss
projects the hidden states itself, so it must apply the same transform, or the model would be
trained on logits that inference never produces. The names are the Hugging Face config fields;
the families that read them differently are listed below. tailor.train.loss.check_head refuses
any model whose logits this still does not reproduce.
"""

from __future__ import annotations

from typing import NamedTuple

# Families whose Hugging Face forward reads a field unlike the others: MPT's config has a
# `logit_scale` its forward never applies; HyperCLOVA X multiplies by `logits_scaling` (muP),
# where Granite and MiniCPM3 divide.
_IGNORES_LOGIT_SCALE = {"mpt"}
_MULTIPLIES_LOGITS_SCALING = {"hyperclovax"}


class LogitTransform(NamedTuple):
    """logits -> softcap * tanh(logits * scale / softcap), or logits * scale without a cap."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> "LogitTransform":
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        kind = getattr(text, "model_type", None)
        scale = 1.0
        logit_scale = getattr(text, "logit_scale", None)
        if isinstance(logit_scale, (int, float)) and kind not in _IGNORES_LOGIT_SCALE:
            scale *= logit_scale
        scaling = getattr(text, "logits_scaling", None)
        if isinstance(scaling, (int, float)) and scaling:
            scale = scale * scaling if kind in _MULTIPLIES_LOGITS_SCALING else scale / scaling
        return cls(scale=float(scale), softcap=getattr(text, "final_logit_softcapping", None) or None)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def apply_(self, logits, *, slope: bool = True):
        """Transform fp32 `logits` in place. Returns d(out)/d(in): elementwise under a cap (one
        more chunk-sized buffer, so only when `slope`), else the constant scale."""
        if self.softcap is None:
            if self.scale != 1.0:
                logits.mul_(self.scale)
            return self.scale
        t = logits.mul_(self.scale / self.softcap).tanh_()
        grad = (1 - t.square()).mul_(self.scale) if slope else None  # d cap*tanh(s*x/cap) = s(1 - tanh^2)
        t.mul_(self.softcap)
        return grad
