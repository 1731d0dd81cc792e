"""Models for the engine and server tests: the tiny Llama with its weights scaled up so greedy
decoding wanders through the vocabulary (the stock random init repeats one token), and LoRA
adapters with random non-zero weights so an adapter's answers differ from its base's."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import make_model, make_tokenizer


def save_lively(folder: Path, *, seed: int = 0, scale: float = 8.0) -> Path:
    import torch

    tok = make_tokenizer()
    model = make_model(tok, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    model.generation_config.eos_token_id = [tok.eos_token_id]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_lora(base: Path, folder: Path, *, seed: int = 1, targets=("q_proj", "v_proj", "gate_proj", "down_proj"),
              **lora_kw) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False, **lora_kw)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # big enough to change greedy answers
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(base)
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder
