"""What `tailor generate` and `tailor chat` share: their config and how they load a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tailor.errors import TailorError


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
    json_schema: str | None = None
    """A JSON Schema file: each reply is JSON valid against it, enforced while decoding (as response_format)."""


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


def sampling(cfg: TalkConfig, loaded=None, schema: dict | None = None):
    """The replies' sampling parameters; `schema` (read_schema's) becomes their grammar, for the
    `loaded` model's tokenizer (needed only with a schema)."""
    from tailor.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed)
    if schema is not None:
        params.grammar = _compile(cfg.json_schema, schema, loaded)
    return params


def read_schema(cfg: TalkConfig) -> dict | None:
    """--json-schema FILE as a dict: read before the model loads, so a bad file fails at once."""
    if cfg.json_schema is None:
        return None
    path = Path(cfg.json_schema)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TailorError(f"--json-schema {path}: cannot read it ({exc.strerror}).") from exc
    except ValueError as exc:
        raise TailorError(f"--json-schema {path}: not JSON ({exc}). Fix: the file holds one JSON Schema object.") \
            from exc
    if not isinstance(schema, dict):
        raise TailorError(f"--json-schema {path}: a JSON Schema is an object ({{\"type\": ...}}), not "
                          f"{type(schema).__name__}.")
    from tailor.infer.grammar import GrammarError
    from tailor.infer.schema import check

    try:
        check(schema, strict=False)  # limits and refs; the compiler's own checks follow once the model loads
    except GrammarError as exc:
        raise TailorError(_schema_problem(cfg.json_schema, exc)) from exc
    return schema


def _compile(name: str, schema: dict, loaded):
    """The same checks and compiler as the server's response_format (strict: false)."""
    from tailor.infer.grammar import GrammarError
    from tailor.infer.loading import embedding_rows
    from tailor.infer.schema import compile_schema

    try:
        return compile_schema(schema, strict=False, tokenizer=loaded.tokenizer, stop_ids=list(loaded.stop_ids),
                              width=embedding_rows(loaded.engine.backend))
    except GrammarError as exc:
        raise TailorError(_schema_problem(name, exc)) from exc


def _schema_problem(name: str, exc) -> str:
    return f"--json-schema {name}{f' (at {exc.path})' if exc.path else ''}: {exc}"
