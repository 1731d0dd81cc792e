"""The Ollama Modelfile: the Go template is checked against hand-expanded golden prompts and
against the Jinja template it replaces; unsupported templates are refused."""

from __future__ import annotations

import re

import pytest

from tailor.data.templates import ALPACA, CHATML, LLAMA3
from tailor.errors import TailorError
from tailor.export.ollama import ollama_values, render_go, render_jinja, translate
from tiny import SMOL_TEMPLATE

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"}]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}] + CHAT


def test_go_renderer_subset():
    values = {"System": "S", "Messages": [{"Role": "user", "Content": "a"}, {"Role": "system", "Content": "b"}]}
    assert render_go("{{ if .System }}[{{ .System }}]{{ else }}none{{ end }}", values) == "[S]"
    assert render_go("{{ if .Missing }}x{{ else }}none{{ end }}", values) == "none"
    assert render_go('{{ range .Messages }}{{ if ne .Role "system" }}{{ .Content }};{{ end }}{{ end }}', values) == "a;"
    assert render_go('{{ range .Messages }}{{ if eq .Role "system" }}{{ .Content }}{{ end }}{{ end }}', values) == "b"
    assert render_go("a  \n{{- .System -}}\n  b", values) == "aSb"


def test_ollama_values_adds_default_system_and_merges_turns():
    v = ollama_values([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "SYS")
    assert v["System"] == "SYS"
    assert v["Messages"] == [{"Role": "system", "Content": "SYS"}, {"Role": "user", "Content": "a\n\nb"}]
    assert ollama_values(WITH_SYSTEM, "SYS")["System"] == "Be brief."  # the request's own system wins


def _go(tr, messages):
    return render_go(tr.template, ollama_values(messages, tr.system))


def test_smollm2_template_golden():
    tr = translate(SMOL_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert tr.layout == "chatml" and tr.system == SMOL_SYSTEM
    golden = (f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert _go(tr, CHAT) == golden == render_jinja(SMOL_TEMPLATE, CHAT)
    golden_sys = golden.replace(SMOL_SYSTEM, "Be brief.")
    assert _go(tr, WITH_SYSTEM) == golden_sys == render_jinja(SMOL_TEMPLATE, WITH_SYSTEM)


def test_plain_chatml_has_no_default_system():
    tr = translate(CHATML)
    assert tr.layout == "chatml" and tr.system is None
    golden = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert _go(tr, CHAT) == golden == render_jinja(CHATML, CHAT)


def test_llama3_template_golden():
    bos = "<|begin_of_text|>"
    tr = translate(LLAMA3, bos_token=bos, eos_token="<|eot_id|>", add_bos=True)
    assert tr.layout == "llama3" and tr.system is None
    golden = ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # llama.cpp adds the BOS itself (add_bos), so the Go template leaves it out
    assert _go(tr, WITH_SYSTEM) == golden
    assert render_jinja(LLAMA3, WITH_SYSTEM, bos_token=bos) == bos + golden


MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
           "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


# ChatML-like but a blank line after each turn: close to ChatML, still not equal, so refused.
CHATML_DOUBLE_NEWLINE = CHATML.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + '\n\n'")
assert CHATML_DOUBLE_NEWLINE != CHATML


@pytest.mark.parametrize("template", [ALPACA, MISTRAL, CHATML_DOUBLE_NEWLINE])
def test_other_templates_are_refused(template):
    with pytest.raises(TailorError, match="not one tailor can translate.*ChatML.*Llama 3"):
        translate(template, bos_token="<s>", eos_token="</s>")


def test_template_that_rejects_system_turns_is_refused_clearly():
    gemma_like = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                  "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}")
    with pytest.raises(TailorError, match="not one tailor can translate.*System role not supported.*by hand"):
        translate(gemma_like)


def test_cli_writes_modelfile(tmp_path, capsys):
    from infer_kit import save_lively

    from tailor.cli import main

    src = save_lively(tmp_path / "src")
    out = tmp_path / "ollama" / "m.gguf"
    assert main(["export", str(src), "--gguf", str(out), "--ollama", str(tmp_path / "ollama")]) == 0
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    assert text.startswith("FROM ./m.gguf\n")
    assert f'SYSTEM """{SMOL_SYSTEM}"""' in text
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<|im_end|>"]
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S).group(1)
    for messages in (CHAT, WITH_SYSTEM):
        assert render_go(template, ollama_values(messages, system)) == render_jinja(SMOL_TEMPLATE, messages)


def test_gguf_outside_the_folder_is_named_by_absolute_path(tmp_path):
    from infer_kit import save_lively

    from tailor.export.gguf import export_gguf
    from tailor.export.ollama import write_modelfile

    gguf = export_gguf(str(save_lively(tmp_path / "src")), tmp_path / "a" / "m.gguf", quant="q8_0")
    path = write_modelfile(gguf, tmp_path / "b")
    assert path.read_text().startswith(f"FROM {gguf.resolve()}\n")
