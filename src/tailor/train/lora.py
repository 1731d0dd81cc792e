"""LoRA: wrap a model with PEFT adapters, and fold an adapter back into its base (`tailor merge`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tailor.errors import TailorError


def wrap(model, cfg, *, base_ref: str, new_token_ids: list[int] = ()):
    """Add trainable LoRA adapters (r, alpha, dropout, targets, DoRA, rsLoRA) to a frozen `model`.

    `base_ref` is written into adapter_config.json as the base, so plain `peft` finds it.
    Tokens the chat template added (`new_token_ids`) get trainable embedding rows, and
    trainable lm_head rows when the head is its own matrix, saved with the adapter.
    """
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [
        t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, use_dora=cfg.dora, use_rslora=cfg.rslora,
                      task_type="CAUSAL_LM", base_model_name_or_path=base_ref,
                      trainable_token_indices=_token_rows(model, list(new_token_ids)))
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as exc:  # e.g. target modules that the model does not have
        raise TailorError(f"lora_targets {cfg.lora_targets!r}: {exc}") from exc
    peft_model.peft_config["default"].base_model_name_or_path = base_ref
    return peft_model


def _token_rows(model, ids: list[int]) -> dict[str, list[int]] | None:
    """PEFT's trainable_token_indices for new tokens: {module name: rows}. A list would adapt the
    input embedding only; on an untied head (Mistral, Llama-2 base) the new end-of-turn token's
    output row would stay at its initialisation and the model would never learn to stop. A tied
    head shares the embedding's rows (PEFT ties the adapter to it), so it is not named twice."""
    if not ids:
        return None
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {m: n for n, m in model.named_modules()}
    rows = {names[embed]: ids}
    if head is not None and head.weight is not embed.weight:
        rows[names[head]] = ids
    return rows


def keep_updates_in_fp32(peft_model) -> None:
    """Make each adapted layer return base(x) + lora(x) in fp32.

    Under bf16 the frozen layer's output is already a bf16 number, and adding an adapter
    update smaller than half its last bit leaves it unchanged, every time: early in training
    (B starts at zero) most of LoRA's effect was rounded away, and the loss fell far slower than
    in fp32 (4.39 vs 4.00 after one step on the demo data). Upcasting the frozen output first
    keeps the sum exact; the residual stream then carries it in fp32.
    """
    from peft.tuners.lora import LoraLayer

    def to_fp32(module, args, output):
        return output.float()

    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            module.base_layer.register_forward_hook(to_fp32)


def save_options(model) -> dict:
    """Keyword arguments for `model.save_pretrained`: for an adapter, whether to save the whole
    embedding layers. PEFT's "auto" answers by reading the base's config.json through
    base_model_name_or_path, which for the embedded default (`default:...`, see
    models.default_ref) is no folder it can read: it then warns and guesses "unchanged". tailor
    knows: the embeddings were resized exactly when the chat template added tokens, which are
    then the adapter's trainable tokens."""
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is None:
        return {}
    return {"save_embedding_layers": bool(getattr(cfg, "trainable_token_indices", None))}


def load_trainable(model, adapter_dir: Path):
    """Load a saved adapter's weights into an already wrapped model (resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise TailorError(f"Checkpoint {adapter_dir} does not match this model: unexpected {result.unexpected_keys[:3]}")


def merge(adapter_dir: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Fold the LoRA adapter in `adapter_dir` into its base; write a full model folder at `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tailor import models

    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TailorError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json).")
    base_folder = models.local_folder(models.adapter_base(adapter_dir))
    torch_dtype = models.pick_dtype(dtype, "cpu") if dtype != "auto" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch_dtype)
    tokenizer = models.load_tokenizer(str(adapter_dir))
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    try:
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    except Exception as exc:
        raise TailorError(f"Could not apply adapter {adapter_dir} to {base_folder}: {exc}") from exc
    gen = adapter_dir / "generation_config.json"
    if gen.is_file():
        from transformers import GenerationConfig

        merged.generation_config = GenerationConfig.from_pretrained(str(adapter_dir))
    write_model_folder(merged, tokenizer, out, note=f"merged from adapter {adapter_dir.resolve()} on {base_folder}")
    return out


def write_model_folder(model, tokenizer, out: Path, *, note: str = "") -> None:
    """save_pretrained model + tokenizer into `out`, atomically (temp folder, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if note:
            (tmp / "tailor-source.txt").write_text(note + "\n")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an older folder of that name is removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def adapter_info(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "adapter_config.json").read_text())
