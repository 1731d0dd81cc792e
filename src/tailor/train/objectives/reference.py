"""DPO's reference log-probabilities, without a second copy of the model where one can be avoided
(--dpo-reference):

  cached (default)  computed once, before the first step, in one pass over the training and
                    validation pairs, and kept in tailor's dataset cache beside the rendered
                    data, keyed by the pairs' tokens, the model's files and the numerics: a
                    second run on the same data and model (another beta, a resume) reads them
                    back. LoRA: the model with its adapters off (PEFT's disable_adapter), which
                    is the base; full: the model before its first step (a resumed run whose
                    cache is gone loads the base once for the pass, then frees it).
  copy              computed at every step, beside the policy's forward: LoRA turns its adapters
                    off for it (still no copy); full fine-tuning keeps a frozen copy of the base
                    in memory, as TRL does without precompute_ref_log_probs.

A reference is called with (split, item indices, the collated batch, the policy's parts) and
returns the [2n] sequence log-probs of the batch's pairs, chosen first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tailor.train import distributed
from tailor.train.logprobs import sequence_sums, tempered, token_logps

VERSION = 2  # bumped when how the pass computes changes (2: pairs packed in one row)


def make(session, *, resumed: bool):
    cfg = session.cfg
    if cfg.dpo_reference == "copy":
        if cfg.method == "lora":
            return Live(_policy_forward(session.model, session.precision, adapters_off=True))
        say(session, "reference: a frozen copy of the base model in memory (--dpo-reference copy)")
        return Live(_model_forward(_load_base(session), session.precision, cfg))
    return Cached(_table(session, resumed))


class Cached:
    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def __call__(self, split, indices, batch, parts, model=None) -> torch.Tensor:
        rows = self.table[split][np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.concatenate([rows[:, 0], rows[:, 1]])).float()


class Live:
    """Computed for each batch: `forward(batch, n, parts, model)` without gradients."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, split, indices, batch, parts, model=None) -> torch.Tensor:
        return self.forward(batch, 2 * len(indices), parts, model)


def tokens(session, temperature: float = 1.0):
    """GRPO's reference: forward(batch, parts, model=None) -> the per-token log-probs of a
    batch's trained targets under the reference (of its logits / temperature), without
    gradients. LoRA: the policy with its adapters off (no copy); full fine-tuning: a frozen copy
    of the base in memory, as TRL keeps."""
    if session.cfg.method == "lora":
        return _policy_tokens(session.model, session.precision, adapters_off=True, temperature=temperature)
    say(session, "reference: a frozen copy of the base model in memory (full fine-tuning with --beta above 0)")
    return _model_tokens(_load_base(session), session.precision, session.cfg, temperature)


def _policy_tokens(policy, precision, *, adapters_off: bool, temperature: float = 1.0):
    """The policy's own forward in eval mode (no dropout), for LoRA with PEFT's adapters off
    (the base), for full fine-tuning as it is (before its first step)."""
    def forward(batch, parts, model=None):
        model = model if model is not None else policy
        was = model.training
        model.eval()
        try:
            with (torch.no_grad(), model.disable_adapter() if adapters_off else contextlib.nullcontext(),
                  precision.autocast()):
                return token_logps(parts[0], tempered(parts[1], temperature), batch, precision.compute)
        finally:
            model.train(was)
    return forward


def _model_tokens(ref_model, precision, cfg, temperature: float = 1.0):
    """A frozen model of its own (the base, for full fine-tuning)."""
    from tailor.train.loss import decoder_parts

    body, head = decoder_parts(ref_model, fused=cfg.fused)
    head = tempered(head, temperature)

    def forward(batch, parts=None, model=None):
        with torch.no_grad(), precision.autocast():
            return token_logps(body, head, batch, precision.compute)
    return forward


def _policy_forward(policy, precision, *, adapters_off: bool):
    """DPO's: the sequences' summed log-probs of `_policy_tokens`."""
    per_token = _policy_tokens(policy, precision, adapters_off=adapters_off)
    return lambda batch, n, parts, model=None: sequence_sums(per_token(batch, parts, model), batch, n)


def _model_forward(ref_model, precision, cfg):
    per_token = _model_tokens(ref_model, precision, cfg)
    return lambda batch, n, parts=None, model=None: sequence_sums(per_token(batch), batch, n)


def _load_base(session):
    """The run's base model again, frozen, in the dtype the policy's weights had at step 0."""
    from transformers import AutoModelForCausalLM

    from tailor.train.setup import _resize_for_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(session.base.folder), dtype=session.precision.master)
    _resize_for_tokenizer(model, session.tokenizer)
    model.to(session.precision.device).eval().requires_grad_(False)
    return model


# ---- cached: one pass before training ---------------------------------------------------------


def _table(session, resumed: bool) -> dict[str, np.ndarray]:
    """{"train": [n, 2], "val": [m, 2]} reference log-probs (chosen, rejected) of the data's pairs:
    read from the cache, or computed on rank 0 and written there; every rank gets rank 0's."""
    data = session.data
    values = None
    if distributed.is_main():
        path = _cache_path(session)
        values = _read(path)
        if values is None:
            values = _compute(session, data.train + data.val, resumed)
            _write(path, values)
        else:
            say(session, f"reference: log-probs of {len(values)} pairs read from the cache ({path.parent})")
    values = distributed.broadcast(values)
    n = len(data.train)
    return {"train": values[:n], "val": values[n:]}


def _compute(session, pairs, resumed: bool) -> np.ndarray:
    from tailor.train.objectives.dpo import collate_pairs

    cfg, prec = session.cfg, session.precision
    if cfg.method == "lora" or not resumed:
        forward = _policy_forward(session.model, prec, adapters_off=cfg.method == "lora")
        what = "the model with its adapters off" if cfg.method == "lora" else "the model before its first step"
        parts = session.parts
    else:  # the policy has moved on: the base is loaded for this pass only
        forward, what, parts = _model_forward(_load_base(session), prec, cfg), "the base model, loaded again", None
    say(session, f"reference: log-probs of {len(pairs)} pairs from {what}, in one pass before training")
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    t0, shown = time.perf_counter(), time.perf_counter()
    for s in range(0, len(order), cfg.batch_size):
        idx = order[s:s + cfg.batch_size]
        batch = collate_pairs([pairs[i] for i in idx], cfg, session.pad_id, session.parts[0])
        v = forward(batch, 2 * len(idx), parts).double().cpu().numpy()
        out[idx, 0], out[idx, 1] = v[:len(idx)], v[len(idx):]
        if time.perf_counter() - shown > 10:
            shown = time.perf_counter()
            say(session, f"reference: {s + len(idx)}/{len(pairs)} pairs")
    say(session, f"reference: done in {time.perf_counter() - t0:.1f}s")
    return out


def _cache_path(session) -> Path:
    from tailor.data.cache import cache_root

    return cache_root() / "reference" / f"{_key(session)}.npy"


def _key(session) -> str:
    """The pairs' tokens and masks, the model's files, and everything that changes the numbers."""
    cfg, prec = session.cfg, session.precision
    h = hashlib.sha256(f"tailor-dpo-reference-v{VERSION}|".encode())
    h.update(json.dumps([cfg.method, str(prec.compute), str(prec.master), prec.device, cfg.fused, cfg.batching,
                         _model_files(Path(session.base.folder)), len(session.tokenizer)]).encode())
    for pair in session.data.train + session.data.val:
        for ex in (pair.chosen, pair.rejected):
            h.update(np.asarray(ex.input_ids, dtype=np.int32).tobytes())
            h.update(np.packbits(np.asarray(ex.labels) >= 0).tobytes())
            h.update(b"|")
    return h.hexdigest()[:32]


def _model_files(folder: Path) -> list:
    """What identifies a model folder's weights without reading them: each file's name, size and
    modification time, and the config's content."""
    out = []
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def _read(path: Path) -> np.ndarray | None:
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None


def _write(path: Path, values: np.ndarray) -> None:
    """Atomically (temp file, rename); a cache that cannot be written only costs the next run a pass."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, values)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def say(session, text: str) -> None:
    session._say(text)
