"""`tailor export --ollama DIR`: an Ollama Modelfile for an exported GGUF.

Ollama does not run Jinja chat templates: it matches a GGUF's template against a fixed list of
known ones and otherwise falls back to a bare `{{ .Prompt }}`, so a fine-tune with its own
template talks to the wrong prompt format and never stops. The Modelfile therefore carries an
explicit Go template, one `PARAMETER stop` per end-of-turn token, and `SYSTEM` when the chat
template injects a default system prompt (SmolLM2's and Qwen's do).

Translated layouts (system / user / assistant turns, no tools):
  - ChatML: `<|im_start|>ROLE\\n...<|im_end|>\\n` (SmolLM2, Qwen2/2.5, tailor's chatml fallback);
  - Llama 3: `<|start_header_id|>ROLE<|end_header_id|>\\n\\n...<|eot_id|>` (Llama 3 / 3.2 without
    the dated system prompt of 3.1, tailor's llama3 fallback).
Every other template is refused with a clear error, and so is any template for which the Go
template, rendered here the way Ollama renders it, does not reproduce the Jinja rendering of a set
of probe conversations byte for byte. Two known differences: system messages are moved to the
front (Ollama gathers them into .System), and Llama 3's `| trim` of message text is not repeated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import TailorError


@dataclass(frozen=True)
class Layout:
    name: str
    go_template: str
    system_block: str  # regex for the rendered system turn, its text in group 1


CHATML = Layout(
    "chatml",
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
    "<|im_start|>assistant\n",
    r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
)
LLAMA3 = Layout(
    "llama3",
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ range .Messages }}{{ if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
)
LAYOUTS = (CHATML, LLAMA3)

# Conversations both renderings must agree on before a translation is trusted.
PROBES = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue.\nOr red."},
     {"role": "user", "content": "Another, ünïcödé ✓"}],
    [{"role": "system", "content": "Be brief.\n\nVery brief."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"}],
]


@dataclass(frozen=True)
class Translation:
    layout: str
    template: str  # the Go template
    system: str | None  # the default system prompt, when the chat template injects one


# ---------------------------------------------------------------------------------------------
# Rendering both sides


def render_jinja(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "") -> str:
    """The prompt a Hugging Face tokenizer renders (same Jinja settings as transformers)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos_token, eos_token=eos_token)


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go(template: str, values: dict) -> str:
    """Render the Go text/template subset this module emits: fields, `if` (a field, or `eq`/`ne`
    of a field and a string) with `else`, `range`, and `{{-`/`-}}` trimming."""
    tree, rest = _parse(_lex(template), 0)
    if rest != len(_lex(template)):
        raise ValueError("unbalanced {{ end }} in Go template")
    return _exec(tree, values)


def _lex(template: str) -> list[tuple[str, str]]:
    out, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip() if trim_next else text
        out.append(("text", text.rstrip() if m.group(1) else text))
        out.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens, i):
    """(nodes, next index): nodes until an `end`/`else` at this level."""
    nodes = []
    while i < len(tokens):
        kind, body = tokens[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
        elif body in ("end", "else"):
            return nodes, i
        elif body.startswith(("if ", "range ")):
            word, arg = body.split(" ", 1)
            inner, i = _parse(tokens, i + 1)
            other = []
            if tokens[i][1] == "else":
                other, i = _parse(tokens, i + 1)
            nodes.append((word, arg, inner, other))
            i += 1
        else:
            nodes.append(("value", body))
            i += 1
    return nodes, i


def _value(expr: str, dot: dict):
    parts = expr.split()
    if parts[0] in ("eq", "ne") and len(parts) == 3:
        same = _value(parts[1], dot) == parts[2].strip('"')
        return same if parts[0] == "eq" else not same
    if expr.startswith("."):
        return dot.get(expr[1:])
    raise ValueError(f"unsupported Go template expression {expr!r}")


def _exec(nodes, dot) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "value":
            out.append(str(_value(node[1], dot) or ""))
        elif node[0] == "if":
            out.append(_exec(node[2] if _value(node[1], dot) else node[3], dot))
        else:  # range
            items = _value(node[1], dot) or []
            out.append("".join(_exec(node[2], item) for item in items) if items else _exec(node[3], dot))
    return "".join(out)


def ollama_values(messages: list[dict], default_system: str | None) -> dict:
    """What Ollama hands the template: the Modelfile's SYSTEM when the request has none, all system
    texts joined into .System, and consecutive same-role messages merged (template.go, collate)."""
    if default_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": default_system}] + messages
    collated: list[dict] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": collated}


# ---------------------------------------------------------------------------------------------
# Translating


def translate(chat_template: str, *, bos_token: str = "", eos_token: str = "", add_bos: bool = False) -> Translation:
    """The Go template equivalent to `chat_template`, or a TailorError naming what is supported."""
    def jinja(messages):
        text = render_jinja(chat_template, messages, bos_token=bos_token, eos_token=eos_token)
        # llama.cpp (under Ollama) adds the BOS itself when the GGUF says add_bos
        return text[len(bos_token):] if add_bos and bos_token and text.startswith(bos_token) else text

    try:
        rendered = [jinja(p) for p in PROBES]
    except Exception as exc:  # e.g. a template that rejects system turns, or needs strftime_now
        raise _refused(f" It fails on a plain system/user/assistant conversation: {exc}") from exc
    for layout in LAYOUTS:
        found = re.match(layout.system_block, rendered[0], re.S)
        system = found.group(1) if found else None
        if all(render_go(layout.go_template, ollama_values(p, system)) == r for p, r in zip(PROBES, rendered)):
            return Translation(layout.name, layout.go_template, system)
    raise _refused("")


def _refused(detail: str) -> TailorError:
    return TailorError(
        "This model's chat template is not one tailor can translate for Ollama. Translated: ChatML "
        "(SmolLM2, Qwen2) and Llama 3 (without 3.1's dated system prompt); refused: every other layout "
        "(Alpaca, Mistral [INST], Gemma, Phi-3, Llama 3.1, tool-calling sections)." + detail + " The GGUF file "
        "is written and carries the template; write the Modelfile's TEMPLATE by hand "
        "(https://github.com/ollama/ollama/blob/main/docs/template.md), or leave out --ollama."
    )


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TailorError('The template or system prompt contains """, which a Modelfile cannot quote.')
    return f'"""{text}"""'


def modelfile_text(gguf_ref: str, translation: Translation, stops: list[str]) -> str:
    lines = [f"FROM {gguf_ref}", "", f"TEMPLATE {_quoted(translation.template)}", ""]
    if translation.system:
        lines += [f"SYSTEM {_quoted(translation.system)}", ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def gguf_chat_info(gguf_path: Path) -> dict:
    """The chat template, BOS/EOS texts, add_bos and end-of-turn texts stored in a GGUF file."""
    from tailor import gguf_header

    # the header's keys only: GGUFReader would index every tensor first (~2.5 s for SmolLM2)
    fields = gguf_header.fields(gguf_path, ["tokenizer.ggml.tokens", "tokenizer.chat_template",
                                            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                            "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token"])

    def get(key, default=None):
        value = fields.get(key)
        return default if value is None else value

    tokens = get("tokenizer.ggml.tokens", [])
    text = lambda key: tokens[get(key)] if get(key) is not None and get(key) < len(tokens) else ""  # noqa: E731
    stops = [text(k) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eos_token_id") if text(k)]
    return {"template": get("tokenizer.chat_template"), "bos": text("tokenizer.ggml.bos_token_id"),
            "eos": text("tokenizer.ggml.eos_token_id"), "add_bos": bool(get("tokenizer.ggml.add_bos_token", False)),
            "stops": list(dict.fromkeys(stops))}


def write_modelfile(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write out_dir/Modelfile for the GGUF at gguf_path; return its path."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    info = gguf_chat_info(gguf_path)
    if not info["template"]:
        raise TailorError(f"{gguf_path} has no chat template, so there is nothing to translate for Ollama.")
    translation = translate(info["template"], bos_token=info["bos"], eos_token=info["eos"], add_bos=info["add_bos"])
    out_dir.mkdir(parents=True, exist_ok=True)
    # Ollama reads FROM relative to the Modelfile: a file beside or below it stays portable
    ref = os.path.relpath(gguf_path.resolve(), out_dir.resolve())
    ref = str(gguf_path.resolve()) if ref.startswith("..") else f"./{ref}"
    path = out_dir / "Modelfile"
    tmp = out_dir / ".Modelfile.tmp"
    tmp.write_text(modelfile_text(ref, translation, info["stops"]))
    os.replace(tmp, path)
    return path
