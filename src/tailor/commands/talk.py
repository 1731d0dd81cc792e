"""What `tailor generate` and `tailor chat` share: their config and how they load a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TalkConfig:
    model: str = "default"
    """Model: a folder, a .gguf file, a hub id, a LoRA adapter folder, or 'default' (SmolLM2-135M-Instruct)."""
    system: str | None = None
    """System prompt: changes behaviour without changing weights."""
    max_new_tokens: int = 256
    """Most tokens to generate per reply."""
    temperature: float = 0.7
    """Sampling temperature; 0 is greedy and deterministic."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches this."""
    seed: int | None = None
    """Random seed for sampling (same seed, same answer)."""
    dtype: str = "auto"
    """auto (on a CPU: the decode precision measured fastest on this CPU at first load, cached in $TAILOR_HOME/autotune
    and never slower than fp32 at batch 1; on a GPU: bf16, or fp16 without bf16), float32, bfloat16 or float16 (that dtype throughout)."""
    chat_template: str | None = None
    """For a model without a chat template: chatml (default), llama3, alpaca, or a .jinja file."""
    quantize: Literal["int8"] | None = None
    """int8: weight-only int8 projections on a CPU (half their memory; ~96% of next tokens equal bf16's,
    a little faster at batch 1). Changes the numerics, so off by default."""


def load_for_talk(cfg: TalkConfig):
    """(loaded, warning): the model on tailor's engine (infer.loading.Loaded)."""
    import logging

    from transformers.utils import logging as hf_logging

    from tailor.infer.loading import load_engine

    hf_logging.disable_progress_bar()
    # the first load on a CPU measures its decode precision for a few seconds: say so, and what won
    logging.basicConfig(format="%(message)s")
    logging.getLogger("tailor.infer.autotune").setLevel(logging.INFO)
    loaded = load_engine(cfg.model, dtype=cfg.dtype, max_batch=1, chat_template=cfg.chat_template,
                         quantize=cfg.quantize)
    return loaded, loaded.warning


def sampling(cfg: TalkConfig):
    from tailor.infer.sampling import SamplingParams

    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p, seed=cfg.seed)
