"""`tailor export --gguf`: write a model (a run, a model folder, or a LoRA adapter merged first)
as one GGUF file that llama.cpp, Ollama and LM Studio load.

What llama.cpp needs, and where each piece comes from (llama.cpp's convert_hf_to_gguf.py is the
reference; research.md section 1):
  - its own tensor names (gguf-py's tensor map) and, for the Llama architecture, Q and K rows
    re-ordered for its RoPE layout (`permute_qk`); without that the model loads and talks nonsense;
  - the hyper-parameters as `{arch}.*` keys;
  - the tokenizer and the chat template (gguf_vocab.py).
Llama, SmolLM2 and Mistral are written as llama.cpp's "llama" architecture; Qwen2 as "qwen2"
(which rotates halves like Hugging Face does, so it needs no permutation, and has Q/K/V biases).
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import TailorError, UsageError

QUANTS = ("f16", "bf16", "q8_0", "f32")


@dataclass(frozen=True)
class Arch:
    name: str  # llama.cpp's architecture name
    permute: bool  # re-order Q/K rows for llama.cpp's adjacent-pair RoPE


ARCHS = {
    "LlamaForCausalLM": Arch("llama", True),
    "MistralForCausalLM": Arch("llama", True),
    "Qwen2ForCausalLM": Arch("qwen2", False),
}


def export_gguf(source: str | os.PathLike, out: str | os.PathLike, *, quant: str = "f16") -> Path:
    """Write `source` (run folder, model folder, adapter, .gguf, hub id, "default") to `out`."""
    if quant not in QUANTS:
        raise UsageError(f"--quant {quant!r}: use one of {', '.join(QUANTS)}.")
    out = Path(out)
    if out.suffix.lower() != ".gguf":
        raise UsageError(f"--gguf {out}: the output file name must end in .gguf.")
    with model_folder(source) as folder:
        _write(folder, out, quant)
    return out


@contextmanager
def model_folder(source: str | os.PathLike):
    """A full Hugging Face model folder for `source`; an adapter is merged into a temporary one."""
    from tailor import models

    path = Path(source).expanduser()
    if (path / "final").is_dir() and not (path / "config.json").is_file():
        path = path / "final"  # a run folder: its result lives in final/
    src = models.resolve(str(path) if path.exists() else str(source))
    if src.kind != "adapter":
        yield models.local_folder(src.ref)
        return
    from tailor.train.lora import merge

    with tempfile.TemporaryDirectory(prefix="tailor-export-") as tmp:
        yield merge(src.path, Path(tmp) / "merged", dtype="float32")


def _write(folder: Path, out: Path, quant: str) -> None:
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tailor.export.gguf_vocab import add_tokenizer

    config = AutoConfig.from_pretrained(str(folder))
    arch = _arch(config, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    state = model.state_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch.name)
        writer.add_name(folder.name if folder.name != "final" else folder.parent.name)
        _add_hparams(writer, config, arch, quant)
        add_tokenizer(writer, folder, tokenizer, config.vocab_size)
        for name, array, qtype in tensors(state, config, arch, quant):
            writer.add_tensor(name, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; a model file is for sharing
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _arch(config, folder: Path) -> Arch:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in ARCHS:
            return ARCHS[name]
    raise TailorError(
        f"Exporting {', '.join(names) or config.model_type} ({folder}) to GGUF is not supported yet. "
        f"tailor exports {', '.join(sorted(ARCHS))}; for other models use llama.cpp's convert_hf_to_gguf.py."
    )


def _rope(config) -> dict:
    """Rope settings in one shape: transformers 5 keeps them in rope_parameters, 4 in rope_theta/rope_scaling."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling = getattr(config, "rope_scaling", None) or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def _add_hparams(writer, config, arch: Arch, quant: str) -> None:
    import gguf

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope.get("rope_type") or "default"
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind not in ("default", "llama3"):  # llama3 travels as the rope_freqs tensor instead
        raise TailorError(f"RoPE scaling {kind!r} is not supported yet by tailor's GGUF export "
                          "(supported: none, linear, llama3).")
    if arch.name == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def permute_qk(w, n_head: int):
    """Hugging Face's Llama rotates the two halves of each head; llama.cpp rotates adjacent
    pairs. Interleave the halves of each head's rows so both compute the same attention."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(state: dict, config, arch: Arch, quant: str):
    """(llama.cpp name, numpy data, GGML type) for each weight, in llama.cpp's layout."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], config.num_hidden_layers)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = getattr(config, "tie_word_embeddings", False)
    for key, tensor in state.items():
        if "rotary_emb" in key or (tied and key == "lm_head.weight"):
            continue  # llama.cpp computes RoPE itself; a tied head reuses token_embd
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TailorError(f"Tensor {key} has no llama.cpp name; this model layout is not supported yet.")
        data = tensor.detach().float().numpy()
        if arch.permute and key.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, config.num_attention_heads)
        elif arch.permute and key.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, kv_heads)
        yield (name, *encode(name, data, quant))
    extra = rope_freqs(config)
    if extra is not None:
        yield (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", extra, gguf.GGMLQuantizationType.F32)


def encode(name: str, data, quant: str):
    """(data, GGML type): norms, biases and vectors stay F32 (llama.cpp's rule); matrices take `quant`,
    or F16 where q8_0's 32-wide blocks do not divide the row."""
    import gguf
    import numpy as np

    types = gguf.GGMLQuantizationType
    if quant == "f32" or data.ndim < 2 or not name.endswith(".weight") or name.endswith("_norm.weight"):
        return data.astype(np.float32), types.F32
    if quant == "f16":
        return data.astype(np.float16), types.F16
    qtype = types.BF16 if quant == "bf16" else types.Q8_0
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return data.astype(np.float16), types.F16


def rope_freqs(config):
    """Llama 3.1's long-context RoPE as llama.cpp takes it: one frequency factor per pair."""
    import numpy as np

    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base, factor = rope["rope_theta"], rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)
