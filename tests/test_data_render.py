"""Rendering with assistant-only masks, checked as properties over several real chat templates.

For random multi-turn conversations with random weights: the ids equal apply_chat_template's,
each run of labelled tokens decodes to exactly one trained reply plus its end-of-turn marker,
and nothing else is labelled.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailor.data.formats import Conversation, Message
from tailor.data.render import CONTENT_SEARCH, PREFIX_DIFF, Renderer, RenderError, render_conversation
from tiny import SMOL_TEMPLATE, make_tokenizer

TEMPLATES = Path(__file__).parent / "data_files" / "templates"

# name: (template, extra special tokens, bos, eos, expected labelled text for a reply, system allowed)
SPECS = {
    "chatml": ((TEMPLATES / "qwen_chatml.jinja").read_text(), [], None, None,
               lambda c: c + "<|im_end|>", True),
    "smollm2": (SMOL_TEMPLATE, [], None, None, lambda c: c + "<|im_end|>", True),
    "llama3": ((TEMPLATES / "llama3.jinja").read_text(),
               ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", lambda c: c.strip() + "<|eot_id|>", True),
    "gemma": ((TEMPLATES / "gemma.jinja").read_text(), ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
              "<bos>", "<eos>", lambda c: c.strip() + "<end_of_turn>", False),
    "mistral": ((TEMPLATES / "mistral.jinja").read_text(), ["<s>", "</s>", "[INST]", "[/INST]"],
                "<s>", "</s>", lambda c: " " + c.strip() + "</s>", True),
}


@lru_cache(maxsize=None)
def tokenizer_for(name: str):
    template, extra, bos, eos, _, _ = SPECS[name]
    tok = make_tokenizer(chat_template=template, extra_special=extra)
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    return tok


@lru_cache(maxsize=None)
def renderer_for(name: str) -> Renderer:
    return Renderer(tokenizer_for(name))


# Text that starts and ends with a visible character (templates that trim would otherwise change it),
# drawn from ASCII, punctuation, newlines and a little Unicode.
_chars = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 ,.?!'\"\n:;()-_ éü✓日本"))
text = st.builds(lambda a, mid, b: a + mid + b, st.sampled_from(list("abcXYZ0123?é日")),
                 st.text(_chars, max_size=40), st.sampled_from(list("abcXYZ0123.!ü")))


@st.composite
def conversations(draw, system_allowed: bool):
    messages = []
    if system_allowed and draw(st.booleans()):
        messages.append(Message("system", draw(text)))
    turns = draw(st.integers(1, 4))
    for _ in range(turns):
        messages.append(Message("user", draw(text)))
        messages.append(Message("assistant", draw(text), draw(st.booleans())))
    if not any(m.train for m in messages):
        messages[-1].train = True
    return Conversation(messages, line=1)


def labelled_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    runs, current = [], []
    for t, lab in zip(ids, labels):
        if lab != -100:
            assert lab == t
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def check_conversation(name: str, conv: Conversation) -> str:
    tok, renderer = tokenizer_for(name), renderer_for(name)
    expected_text = SPECS[name][4]
    rendered = renderer.render(conv)
    ids, labels = rendered.ids.tolist(), rendered.labels.tolist()
    want = tok.apply_chat_template(conv.template_messages(), tokenize=True, return_dict=False)
    assert ids == list(want)
    expected = [expected_text(m.content) for m in conv.messages if m.role == "assistant" and m.train]
    assert labelled_runs(tok, ids, labels) == expected
    return rendered.method


@pytest.mark.parametrize("name", sorted(SPECS))
def test_property_masks_are_exact(name):
    system_allowed = SPECS[name][5]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(conversations(system_allowed))
    def prop(conv):
        method = check_conversation(name, conv)
        rewrites = name == "mistral" and conv.messages[0].role == "system"
        assert method == (CONTENT_SEARCH if rewrites else PREFIX_DIFF)

    prop()


def test_mistral_system_prompt_falls_back_to_content_search():
    """Mistral v0.3 puts the system prompt into the LAST user turn, so prefixes are not prefixes
    of the full rendering; the fallback must still label exactly the replies."""
    conv = Conversation([Message("system", "Be terse."), Message("user", "Hi"), Message("assistant", "Hello", True),
                         Message("user", "Bye"), Message("assistant", "Ciao", True)], 7)
    assert check_conversation("mistral", conv) == CONTENT_SEARCH


def test_default_system_prompt_is_context_not_trained():
    tok = tokenizer_for("smollm2")
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello!", True)], 1)
    ids, labels = render_conversation(tok, conv)
    assert "You are a helpful AI assistant" in tok.decode(ids)
    assert labelled_runs(tok, ids, labels) == ["Hello!<|im_end|>"]
    # the newline after <|im_end|> is layout, never generated: not trained
    assert tok.decode([ids[-1]]) == "\n" and labels[-1] == -100


def test_weight_zero_reply_is_context_only():
    tok = tokenizer_for("chatml")
    conv = Conversation([Message("user", "Hi"), Message("assistant", "first", False), Message("user", "Again"),
                         Message("assistant", "second", True)], 1)
    ids, labels = render_conversation(tok, conv)
    assert "first" in tok.decode(ids)
    assert labelled_runs(tok, ids, labels) == ["second<|im_end|>"]


def test_tool_call_reply_is_trained_with_its_call_text():
    tok = tokenizer_for("chatml")
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    conv = Conversation([Message("user", "Weather in Paris?"),
                         Message("assistant", "", True, {"tool_calls": [call]}),
                         Message("tool", "18C", False, {"tool_call_id": "c1"}),
                         Message("assistant", "It is 18C.", True)], 1)
    tok_ids, labels = render_conversation(tok, conv)
    runs = labelled_runs(tok, tok_ids, labels)
    assert runs[0] == '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert runs[1] == "It is 18C.<|im_end|>"


def test_template_refusal_is_a_render_error():
    conv = Conversation([Message("system", "x"), Message("user", "Hi"), Message("assistant", "Yo", True)], 3)
    with pytest.raises(RenderError, match="System role not supported"):
        renderer_for("gemma").render(conv)


def test_assistant_first_message_uses_search():
    tok = tokenizer_for("smollm2")
    conv = Conversation([Message("assistant", "Welcome!", True), Message("user", "Hi"),
                         Message("assistant", "Hello", True)], 1)
    r = Renderer(tok).render(conv)
    assert labelled_runs(tok, r.ids.tolist(), r.labels.tolist()) == ["Welcome!<|im_end|>", "Hello<|im_end|>"]
    assert r.method == CONTENT_SEARCH


def test_batch_matches_single():
    renderer = renderer_for("llama3")
    convs = [Conversation([Message("user", f"q{i}"), Message("assistant", f"a {i} " * i, True)], i + 1)
             for i in range(1, 6)]
    batch = renderer.render_batch(convs)
    for conv, r in zip(convs, batch):
        single = renderer.render(conv)
        assert np.array_equal(r.ids, single.ids) and np.array_equal(r.mask, single.mask)
        assert r.line == conv.line
