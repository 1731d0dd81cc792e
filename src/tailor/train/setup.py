"""Everything before the first step: check the data (tokenizer only, so a bad file stops before
any weights are read), split off validation, load the model and pick the precision."""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailor.errors import TailorError


@dataclass
class Data:
    train: list  # Examples (input_ids, labels, line), or Pairs of them (preference data)
    val: list
    val_source: str  # where the validation examples came from, said to the user
    samples: list[tuple[list[dict], str]]  # (prompt messages, reference answer) for eval generations
    prepared: object  # tailor.data.Prepared of the training file (template, stop ids, warnings)
    fingerprint: str  # content hash of the training file: a resume on other data is refused

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per training item (a pair: both of its sequences)."""
        return np.array([len(e) for e in self.train], dtype=np.int64)

    @property
    def items_called(self) -> str:
        """What a training item is, in words (the log and the model card say it)."""
        return {"preference": "preference pairs", "text": "raw-text rows", "prompt": "prompts"}.get(
            self.prepared.kind, "examples")


@dataclass
class Base:
    """The model a run starts from."""

    ref: str  # what the outputs record (models.portable_ref): loads on any machine
    folder: Path  # where its weights were read from on this machine (provenance only)


# GradScaler's first loss scale (its own default); a test raises it to force overflowing steps.
INIT_SCALE = 2.0 ** 16


@dataclass
class Precision:
    compute: object  # torch dtype of matmuls (bf16/fp16 under autocast, or fp32)
    master: object  # torch dtype of trained weights and optimizer state (fp32)
    device: str
    notes: list[str] = field(default_factory=list)
    scaler: object = None  # torch.amp.GradScaler with fp16 compute (dynamic loss scaling), else None

    def autocast(self):
        import torch

        if self.compute == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.compute)

    def backward(self, loss) -> None:
        """fp16 gradients underflow to zero below ~6e-8: scale the loss up first (bf16/fp32: as is)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer, params, max_norm: float) -> tuple[float, bool]:
        """Clip and take the optimizer step: (grad norm, skipped). With fp16 the gradients are
        unscaled before clipping; a step whose gradients hold inf/nan is skipped and the scale
        halved (GradScaler lowers the scale exactly when it skipped). A skipped step reports grad
        norm 0.0 (no gradient was applied; its own was inf/nan, which strict JSON cannot hold)."""
        import torch

        if self.scaler is None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            return norm, False
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale
        return (torch.zeros_like(norm) if skipped else norm), skipped


def make_scaler(device: str):
    import torch

    return torch.amp.GradScaler(device.split(":")[0], init_scale=INIT_SCALE)


def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_data(cfg, tokenizer) -> Data:
    """Validate and render the data (raises DataError with the line-numbered report)."""
    from tailor.data import conversations, prepare

    for name in ("data", "val"):
        path = getattr(cfg, name)
        if path and not Path(path).is_file():
            raise TailorError(f"--{name} {path}: no such file.")
        if path:
            check_kind(cfg.objective, path, name)
    if cfg.objective == "grpo":
        return load_prompts(cfg, tokenizer)
    kw = dict(max_length=cfg.max_length, truncate=cfg.truncate, chat_template=cfg.chat_template)
    prepared = prepare(cfg.data, tokenizer, **kw)
    examples = [prepared.examples[i] for i in range(len(prepared.examples))]
    if not examples:
        raise TailorError(f"{cfg.data}: no usable examples (all were dropped; see the warnings above).")
    if cfg.val:
        val_prep = prepare(cfg.val, tokenizer, **kw)
        val = [val_prep.examples[i] for i in range(len(val_prep.examples))]
        val_convs, source = conversations(cfg.val), f"{cfg.val} ({len(val)} examples)"
        train = examples
    else:
        train, val = split(examples, cfg.val_split, cfg.val_max, cfg.seed)
        val_convs = conversations(cfg.data)
        source = (f"held out {len(val)} of {len(examples)} examples of {cfg.data} (--val-split {cfg.val_split})"
                  if val else "none (no --val, and --val-split 0 or too few examples)")
    return Data(train=train, val=val, val_source=source, samples=eval_samples(val, val_convs, cfg.eval_samples),
                prepared=prepared, fingerprint=file_hash(cfg.data))


@dataclass
class Prompts:
    """What Data.prepared says of GRPO's prompts (rendered in load_prompts, not cached)."""

    warnings: list[str]
    stop_token_ids: list[int]
    kind: str = "prompt"


def load_prompts(cfg, tokenizer) -> Data:
    """GRPO's prompts (OpenAI's RFT lines), checked against the grader's {{item.*}} and rendered
    with the chat template; the validation prompts from --val or a held-out split."""
    import json

    from tailor.data import DataError, formats, prompts
    from tailor.data.templates import ensure_chat_template, stop_token_ids

    note = ensure_chat_template(tokenizer, cfg.chat_template)
    grader = json.loads(cfg.grader) if cfg.grader else None
    room = cfg.max_length - cfg.max_completion_tokens

    def read(path):
        parsed = formats.read(path, fmt="rft")
        if grader is not None:
            prompts.check_grader(grader, parsed.prompts, parsed.problems)
        if parsed.problems.error_count:
            raise DataError(parsed.problems.report())
        rendered, notes = prompts.render(parsed.prompts, tokenizer, room)
        if not rendered:
            raise TailorError(f"{path}: no prompt is left to answer. " + " ".join(notes))
        return rendered, [p.text() for p in parsed.problems.warnings] + notes

    train, warnings = read(cfg.data)
    if cfg.val:
        val, val_warnings = read(cfg.val)
        warnings += [f"{cfg.val}: {w}" for w in val_warnings]
        source = f"{cfg.val} ({len(val)} prompts)"
    else:
        train, val = split(train, cfg.val_split, cfg.val_max, cfg.seed)
        source = (f"held out {len(val)} of {len(train) + len(val)} prompts of {cfg.data} (--val-split "
                  f"{cfg.val_split})" if val else "none (no --val, and --val-split 0 or too few prompts)")
    return Data(train=train, val=val, val_source=source, samples=[],
                prepared=Prompts([note] * bool(note) + warnings, stop_token_ids(tokenizer)),
                fingerprint=file_hash(cfg.data))


# What each objective trains on, and a file of the other kind is refused naming the right flag.
_KIND_WORDS = {"chat": "supervised chat data", "text": "raw text ({\"text\": ...} lines)",
               "preference": "preference pairs (chosen and rejected replies)",
               "prompt": "prompts to answer (messages ending with a user turn: OpenAI's RFT lines)"}


def check_kind(objective: str, path: str, flag: str) -> None:
    from tailor.data.formats import peek_kind

    kind = peek_kind(path)
    if kind is None:  # nothing recognisable: the data checker says what is wrong, line by line
        return
    if objective == "dpo" and kind != "preference":
        raise TailorError(f"--{flag} {path} holds {_KIND_WORDS[kind]}, and --objective dpo trains on preference "
                          "pairs (OpenAI's input/preferred_output/non_preferred_output, or prompt/chosen/rejected). "
                          "Train this file with --objective sft, or give a preference file.")
    if objective == "sft" and kind in ("preference", "prompt"):
        right = "dpo" if kind == "preference" else "grpo (reinforcement fine-tuning with a --grader)"
        raise TailorError(f"--{flag} {path} holds {_KIND_WORDS[kind]}: train it with --objective {right} "
                          "(--objective sft learns from conversations or raw text).")
    if objective == "grpo" and kind not in ("prompt", "chat"):
        raise TailorError(f"--{flag} {path} holds {_KIND_WORDS[kind]}, and --objective grpo answers prompts "
                          "(OpenAI's RFT lines: {\"messages\": [... a user turn last], \"answer\": ...}).")


def split(examples: list, fraction: float, cap: int, seed: int) -> tuple[list, list]:
    """A seeded validation split: ceil(fraction * n) examples, at most `cap`, at least one left to train."""
    n_val = min(cap, math.ceil(fraction * len(examples)), len(examples) - 1) if fraction > 0 else 0
    if n_val <= 0:
        return examples, []
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def _get(obj, key):
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def eval_samples(val: list, convs: list, count: int) -> list[tuple[list[dict], str]]:
    """(prompt, reference) pairs: the conversation up to its last assistant turn, and that turn
    (a preference pair: its prompt, and the chosen reply). Raw text has none."""
    from tailor.data.formats import Preference, Text

    by_line = {_get(c, "line"): c for c in convs}
    out = []
    for ex in val:
        conv = by_line.get(ex.line)
        if conv is None or len(out) >= count or isinstance(conv, Text):
            continue
        if isinstance(conv, Preference):
            conv = conv.conversation("chosen")
        msgs = [{"role": _get(m, "role"), "content": _get(m, "content")} for m in _get(conv, "messages")]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last:
            out.append((msgs[:last], msgs[last]["content"]))
    return out


def precision(cfg) -> Precision:
    """bf16 matmuls where the hardware is fast at them, with fp32 master weights and optimizer
    state (so small updates are not rounded away); fp16 with dynamic loss scaling on a GPU
    without bf16 (a T4); plain fp32 when asked or when bf16 is slow on this CPU."""
    import torch

    from tailor import models
    from tailor.train import distributed

    device = distributed.local_device(models.pick_device(cfg.device))  # under torchrun, this rank's GPU
    compute = models.pick_dtype(cfg.dtype, device)
    if compute != torch.float16:
        return Precision(compute=compute, master=torch.float32, device=device)
    # The fused forward runs under fp16 as under bf16: matmuls in fp16 (fp32 LoRA updates), the
    # residual stream, rotary, attention and the loss's logits/softmax in fp32, so only a single
    # matmul's output can overflow fp16's 65504; loss scaling guards the backward.
    notes = ["float16 compute with fp32 master weights and dynamic loss scaling (steps whose gradients "
             "overflow are skipped and counted in metrics.jsonl); the residual stream, attention and "
             "loss stay fp32"]
    if not device.startswith("cuda"):
        notes.append("float16 on a CPU is slow (few CPUs have fast fp16 matmuls); --dtype auto picks "
                     "bfloat16 or float32 here")
    return Precision(compute=compute, master=torch.float32, device=device, notes=notes, scaler=make_scaler(device))


def load_model(cfg, tokenizer, prec: Precision, resume: Path | None):
    """(model, Base): the model ready to train, full (fp32 master weights) or LoRA-wrapped (frozen
    base in the compute dtype, fp32 adapters). On resume, weights come from the checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    from tailor import models
    from tailor.train import lora

    # full fine-tuning starts from a quantized GGUF's exact weights, not their bf16 copy (see
    # models._storage_dtype); the reference passes of DPO and GRPO read the same folder
    folder = models.local_folder(cfg.model, exact=cfg.method == "full")
    base = Base(ref=models.portable_ref(cfg.model), folder=folder.resolve())
    source = str(resume) if (resume is not None and cfg.method == "full") else str(base.folder)
    kwargs = {"dtype": prec.master if cfg.method == "full" else prec.compute}
    if cfg.qlora:
        kwargs.update(_qlora_kwargs(prec))
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise TailorError(f"Could not load model weights from {source}: {exc}") from exc
    new_tokens = _resize_for_tokenizer(model, tokenizer)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method == "lora":
        if cfg.qlora:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        torch.manual_seed(cfg.seed)  # adapter initialisation is part of the seeded run
        model.name_or_path = base.ref  # what peft takes as the base (it warns when told otherwise)
        model = lora.wrap(model, cfg, base_ref=base.ref, new_token_ids=new_tokens)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(prec.master)
        if prec.compute != torch.float32:
            lora.keep_updates_in_fp32(model)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        if resume is not None:
            lora.load_trainable(model, resume)
    if not cfg.qlora:
        model.to(prec.device)
    model.train()
    return model, base


def _qlora_kwargs(prec: Precision) -> dict:
    import importlib.util

    from transformers import BitsAndBytesConfig

    if not prec.device.startswith("cuda"):
        raise TailorError("--qlora loads the base in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                          "on this machine use plain --method lora (bf16 base) instead.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TailorError("--qlora needs the bitsandbytes package: pip install bitsandbytes")
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=prec.compute), "device_map": {"": prec.device}}


def _resize_for_tokenizer(model, tokenizer) -> list[int]:
    """Grow the embeddings when the chat template added tokens; return the new token ids."""
    have = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= have:
        return []
    model.resize_token_embeddings(len(tokenizer))
    return list(range(have, len(tokenizer)))
