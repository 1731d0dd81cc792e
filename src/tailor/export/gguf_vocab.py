"""The tokenizer half of a GGUF file: vocabulary, token types, merges, llama.cpp's pre-tokenizer
name, special ids and the chat template, written the way llama.cpp's own converter writes them
(`convert_hf_to_gguf.py`, `_set_vocab_gpt2` / `_set_vocab_llama_hf`).

llama.cpp does not run the Hugging Face pre-tokenizer; it picks a built-in regex by the name in
`tokenizer.ggml.pre`. The name comes from the tokenizer.json's pre-tokenizer when that is exactly one of the known layouts
(GPT-2, SmolLM, Llama 3, Qwen2), else as llama.cpp's converter finds it: the sha256 of the token
ids of a fixed check string, looked up in llama.cpp's table. Anything else is refused, since a
wrong name makes llama.cpp tokenise silently differently.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

from tailor.errors import TailorError

# llama.cpp's check string (convert_hf_to_gguf.py, get_vocab_base_pre), byte for byte.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(tokenizer.encode(CHECK_TEXT))) -> llama.cpp pre-tokenizer name, from llama.cpp's table.
KNOWN_HASHES = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / 2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 vocabulary
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}

# The split regexes of the families above, as their tokenizer.json spells them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# TokenType values (gguf.TokenType): written as ints so this module imports without gguf.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def check_hash(tokenizer) -> str:
    return sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()


def pre_tokenizer_name(tokenizer, tokenizer_json: dict) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer.

    The folder's own pre-tokenizer, when it is exactly one of the known layouts, wins over the
    hash: the hash is blind to some differences. A SmolLM2 tokenizer without the digit split
    (transformers' GGUF loader rebuilds one; tailor.models restores the split for its default)
    still hashes as "smollm", yet llama.cpp would then cut "   1" or "\n\n3" unlike the tokenizer
    the model was fine-tuned and is served with; its layout says "gpt-2". The hash decides for
    other layouts.
    """
    name = _name_by_shape(tokenizer_json.get("pre_tokenizer") or {})
    if name:
        return name
    digest = check_hash(tokenizer)
    if digest in KNOWN_HASHES:
        return KNOWN_HASHES[digest]
    raise TailorError(
        f"This tokenizer's pre-tokenizer is not one llama.cpp knows (check-string hash {digest}, "
        f"pre_tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}). tailor exports the "
        "pre-tokenizers of SmolLM/SmolLM2, Llama 3, Qwen2, Mistral Nemo and GPT-2; for another one, "
        "use llama.cpp's convert_hf_to_gguf.py."
    )


def _name_by_shape(pre: dict) -> str | None:
    """The name for a pre-tokenizer that is exactly one of the known families' layouts."""
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def _looks_special(text: str) -> bool:
    return text.startswith("<|") and text.endswith("|>")


def gpt2_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded to the model's vocab size, with llama.cpp token types."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    if max(by_id) >= vocab_size:
        raise TailorError(f"The tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}.")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special or _looks_special(added[i].content) else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def _adds(tokenizer, token_id: int | None) -> tuple[bool, bool]:
    """Whether plain tokenizer(text) puts the BOS first / the EOS last: what llama.cpp must copy."""
    ids = tokenizer("a")["input_ids"]
    return (token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id,
            tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id)


def add_tokenizer(writer, folder: Path, tokenizer, vocab_size: int) -> None:
    """Write the tokenizer of the model folder `folder` (loaded as `tokenizer`) into `writer`."""
    import gguf

    from tailor.data.templates import end_of_turn_text

    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        raise TailorError(f"{folder} has no tokenizer.json; tailor exports fast (tokenizers) tokenizers only.")
    tokenizer_json = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise TailorError(f"Tokenizer type {model.get('type')!r} is not supported yet; tailor exports BPE tokenizers.")
    if model.get("byte_fallback"):
        _add_llama_spm(writer, folder, vocab_size)
    else:
        tokens, types = gpt2_vocab(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer, tokenizer_json))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=not model.get("byte_fallback"), n_vocab=vocab_size)
    special.chat_template = None  # written below, from the tokenizer itself
    special.add_special_token = {}
    special.add_to_gguf(writer, quiet=True)
    add_bos, add_eos = _adds(tokenizer, tokenizer.bos_token_id)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    end = end_of_turn_text(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(end) if end else None
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        writer.add_eot_token_id(eot)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _add_llama_spm(writer, folder: Path, vocab_size: int) -> None:
    """A sentencepiece-style BPE tokenizer.json (byte fallback, Mistral 7B / Llama 2): llama.cpp's
    "llama" tokenizer, as gguf-py's LlamaHfVocab reads it."""
    import gguf

    vocab = gguf.LlamaHfVocab(folder)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
