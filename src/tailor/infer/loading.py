"""From a model reference to something that generates: the HF weights loaded once, wrapped in
the fast forward (or the HF fallback), with LoRA adapters attached on top of their base.

A standard LoRA adapter (linear layers of attention and MLP) is read straight from its
safetensors file and kept separate from the base, so one base serves many adapters. Anything
else PEFT can express (DoRA, trained embeddings, bias, rank patterns) is merged into its own
copy of the base instead: correct, at the cost of memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import TailorError

_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass
class Loaded:
    """One model ready to generate: the engine, which adapter to ask it for, and the ids that
    end a reply."""

    engine: object  # tailor.infer.engine.Engine
    tokenizer: object
    adapter: int
    stop_ids: list[int]
    warning: str | None = None


@dataclass
class LoraWeights:
    """(layer, module name) -> (A [r, in], B [out, r] times the LoRA scale)."""

    pairs: dict[tuple[int, str], tuple]


def load_hf_model(folder: Path, dtype: str = "auto", device: str | None = None):
    """The HF model in eval mode, on `device` in `dtype` (see tailor.models.pick_dtype)."""
    from transformers import AutoModelForCausalLM

    from tailor import models

    device = models.pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=models.pick_dtype(dtype, device))
    except Exception as exc:
        raise TailorError(f"Could not load model weights from {folder}: {exc}") from exc
    return model.to(device).eval()


def fit_embeddings(model, tokenizer, *, shared: bool = False) -> None:
    """Grow the model's embeddings so every tokenizer id has a row. The chat template fallback
    (data.templates.ensure_chat_template) adds its markers as tokens, and an adapter may have been
    trained with added tokens; their new rows start as the mean of the others (transformers'
    default), so an untrained base still runs. `shared`: the base already backs an engine whose
    forward holds the old table, so a longer tokenizer is refused instead."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= rows:
        return
    if shared:
        raise TailorError(f"A model's tokenizer has {len(tokenizer)} tokens, but its base, already loaded for a "
                          f"model listed before it, has {rows} embedding rows (the chat template fallback or an "
                          "adapter's training added tokens). List the model with the larger tokenizer first, or "
                          "serve it with its own `tailor serve`.")
    model.resize_token_embeddings(len(tokenizer))


def embedding_rows(backend) -> int:
    """How many token ids the backend's model can embed: the valid range of a prompt's ids (the
    table may be padded past the tokenizer, never shorter once fit_embeddings ran)."""
    embed = getattr(backend, "embed", None)
    if embed is not None:
        return embed.shape[0]
    return backend.model.get_input_embeddings().num_embeddings


def context_length(config, max_len: int | None = None) -> int:
    """The longest sequence to serve: the model's own limit, capped by `max_len`."""
    limit = getattr(config, "max_position_embeddings", None) or 2048
    return min(limit, max_len) if max_len else limit


QUANTIZE = ("int8",)


def engine_precision(folder: Path, dtype: str, device: str | None, quantize: str | None):
    """(the dtype to load the HF model in, the fast forward's autotune.Plan or None). With
    `dtype` auto on a CPU, for a model the fast forward covers, the plan is measured on this CPU
    (once, then cached: tailor.infer.autotune); otherwise the dtype is as given (or
    models.pick_dtype's) and the forward is in it throughout."""
    from transformers import AutoConfig

    from tailor import models
    from tailor.infer import autotune
    from tailor.infer.llama import supports

    _check_quantize(quantize)
    if dtype != "auto" or models.pick_device(device) != "cpu":
        return dtype, None
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise TailorError(f"Could not read the model config in {folder}: {exc}") from exc
    if not supports(config):
        return dtype, None
    plan = autotune.choose(config, quantize=quantize).plan
    return _no_wider_than_stored(plan.load_dtype, config), plan


def _no_wider_than_stored(load_dtype: str, config) -> str:
    """Weights stored in bf16 (the default model's cache) load as bf16 even for a plan that runs
    parts in fp32: the forward's fp32 copies upcast them exactly, and loading bf16 files as fp32
    peaked at 1.16 GB against 0.42 GB for SmolLM2 (a converted fp32 state dict beside the file)."""
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").replace("torch.", "")
    return "bfloat16" if stored == "bfloat16" and load_dtype == "float32" else load_dtype


def _check_quantize(quantize: str | None) -> None:
    if quantize is not None and quantize not in QUANTIZE:
        raise TailorError(f"--quantize {quantize}: unknown; the choice is {', '.join(QUANTIZE)} (or leave it out).")


def make_backend(model, max_len: int, quantize: str | None = None, plan=None):
    """The fast Llama-family forward when it applies, else the HF model itself. `plan` (an
    autotune.Plan, from engine_precision) sets the forward's precision; without one the forward
    runs in the model's dtype. `quantize='int8'` re-lays the forward's projection and output
    weights out as int8 (tailor.infer.quant): opt-in, because it changes the numerics (measured
    in bench/RESULTS.md)."""
    from tailor.infer.hf_backend import HFForward
    from tailor.infer.llama import LlamaForward, supports

    _check_quantize(quantize)
    if supports(model.config):
        if plan is not None:
            return plan.forward(model, max_len)
        forward = LlamaForward(model, max_len, pack=quantize is None)  # int8 is made from the plain weights
        if quantize == "int8":
            from tailor.infer.quant import quantize_forward

            quantize_forward(forward)
        return forward
    if quantize:
        raise TailorError(f"--quantize {quantize} needs tailor's Llama-family forward, and a "
                          f"{model.config.model_type} model runs on the Hugging Face fallback; leave --quantize out.")
    return HFForward(model, max_len)


def release_hf_weights(model, backend) -> None:
    """Free the HF model's weights once a fast forward holds its own copies (a second copy of the
    model otherwise, twice it when loaded in fp32 for a bf16 or fp16 forward). The model object
    stays, on the meta device: its config, generation config and table sizes still answer. A
    backend that is the HF model (HFForward) keeps it."""
    from tailor.infer.llama import LlamaForward

    if isinstance(backend, LlamaForward):
        model.to("meta")


def read_lora(folder: Path) -> LoraWeights | None:
    """A plain LoRA adapter's weights, scaled; None when it needs PEFT to merge it instead."""
    import torch

    cfg = json.loads((folder / "adapter_config.json").read_text())
    plain = (cfg.get("peft_type", "LORA") == "LORA" and not cfg.get("use_dora") and not cfg.get("modules_to_save")
             and cfg.get("bias", "none") == "none" and not cfg.get("fan_in_fan_out")
             and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern"))
    weights = _adapter_tensors(folder)
    if not plain or weights is None:
        return None
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        m = _LORA_KEY.search(key)
        if m is None:
            return None  # embeddings, lm_head or another module: not a plain adapter
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor
    if any(set(ab) != {"A", "B"} for ab in parts.values()):
        return None
    return LoraWeights({k: (ab["A"], ab["B"] * scale) for k, ab in parts.items()})


def _adapter_tensors(folder: Path):
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").is_file():
        return load_file(str(folder / "adapter_model.safetensors"))
    return None  # a .bin adapter: let PEFT read it


def merged_adapter_model(adapter: Path, base_folder: Path, tokenizer, dtype: str, device: str | None):
    """A fresh copy of the base with the adapter merged in, for adapters read_lora declines."""
    from peft import PeftModel

    model = load_hf_model(base_folder, dtype, device)
    fit_embeddings(model, tokenizer)
    try:
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    except Exception as exc:
        raise TailorError(f"Could not load LoRA adapter {adapter}: {exc}") from exc


def stop_ids(tokenizer, folders: list[Path], model=None) -> list[int]:
    """EOS and end-of-turn ids from the first folder's generation_config.json (a fine-tune records
    the ones it was trained with there), else the model's, plus the template's end-of-turn."""
    from transformers import GenerationConfig

    from tailor.data.templates import stop_token_ids

    config = getattr(model, "generation_config", None)
    for folder in folders:
        if (Path(folder) / "generation_config.json").is_file():
            try:
                config = GenerationConfig.from_pretrained(str(folder))
                break
            except Exception:  # an unreadable file: the model's own config still knows EOS
                continue
    return stop_token_ids(tokenizer, config)


def load_engine(ref, *, dtype: str = "auto", device: str | None = None, max_batch: int = 4,
                max_len: int | None = None, chat_template: str | None = None,
                quantize: str | None = None) -> Loaded:
    """One model reference, loaded for generation: what `tailor generate` and `chat` use."""
    from tailor import models
    from tailor.data.templates import ensure_chat_template
    from tailor.infer.engine import Engine

    src = models.resolve(ref)
    tokenizer = models.load_tokenizer(ref)
    warning = ensure_chat_template(tokenizer, chat_template)
    if src.kind != "adapter":
        folder = models.local_folder(ref)
        load_dtype, plan = engine_precision(folder, dtype, device, quantize)
        model = load_hf_model(folder, load_dtype, device)
        fit_embeddings(model, tokenizer)
        backend = make_backend(model, context_length(model.config, max_len), quantize, plan)
        release_hf_weights(model, backend)
        return Loaded(Engine(backend, tokenizer, max_batch), tokenizer, 0,
                      stop_ids(tokenizer, [folder], model), warning)
    base = models.local_folder(models.adapter_base(src.path))
    precision = engine_precision(base, dtype, device, quantize)
    backend, adapter, model = adapter_backend(src.path, base, tokenizer, precision, device, max_len, quantize)
    return Loaded(Engine(backend, tokenizer, max_batch), tokenizer, adapter,
                  stop_ids(tokenizer, [src.path, base], model), warning)


def adapter_backend(adapter: Path, base: Path, tokenizer, precision, device, max_len, quantize=None):
    """(backend, adapter id, model) for an adapter served alone: LoRA kept separate (id 1) when
    it is plain and the fast path applies, else merged into the base (id 0). `precision`:
    engine_precision's (load dtype, plan)."""
    load_dtype, plan = precision
    lora = read_lora(adapter)
    if lora is not None:
        model = load_hf_model(base, load_dtype, device)
        fit_embeddings(model, tokenizer)
        backend = make_backend(model, context_length(model.config, max_len), quantize, plan)
        if hasattr(backend, "lora_capable"):
            backend.add_lora(1, lora.pairs)
            release_hf_weights(model, backend)
            return backend, 1, model
    model = merged_adapter_model(adapter, base, tokenizer, load_dtype, device)
    backend = make_backend(model, context_length(model.config, max_len), quantize, plan)
    release_hf_weights(model, backend)
    return backend, 0, model
