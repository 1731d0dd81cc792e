"""Conversation + tokenizer -> (input_ids, labels), with the model's own chat template.

Which tokens are the assistant's? Render growing prefixes of the conversation as text: the text
that `messages[:i+1]` adds after the prompt `messages[:i]` + generation prompt is exactly what the
model must produce for message i: its content and the end-of-turn marker (so it learns to stop).
That works for any Jinja template, no `{% generation %}` markers needed. The character spans are
then mapped onto the tokens of ONE tokenisation of the full text (offsets), so the ids are
exactly `apply_chat_template(messages, tokenize=True)`.

A template that rewrites earlier turns when later ones are added (its prefixes are not prefixes of
the full text) cannot be split this way; those conversations fall back to "content-search":
each reply is searched for in the full rendering, in order, as the text the template writes for
it in a minimal chat (its content plus end-of-turn marker), else as its bare content followed by
the end-of-turn marker. The method used is reported per example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tailor.data.formats import Conversation, Message
from tailor.data.templates import end_of_turn_text

PREFIX_DIFF = "prefix-diff"
CONTENT_SEARCH = "content-search"


@dataclass
class TextSpans:
    """A conversation rendered as text, with the character spans to train on."""

    text: str
    spans: list[tuple[int, int]]
    method: str
    missing: int = 0
    """Trained replies the content-search fallback could not find in the text (not trained)."""
    lost_calls: int = 0
    """Tool calls whose function name the template did not write (it does not render tool calls)."""


@dataclass
class Rendered:
    """One rendered example; `mask` is True where the token is trained on."""

    ids: np.ndarray
    mask: np.ndarray
    line: int
    method: str
    missing: int = 0
    lost_calls: int = 0

    @property
    def labels(self) -> np.ndarray:
        return np.where(self.mask, self.ids, -100).astype(np.int64)


class RenderError(Exception):
    """The chat template refused a conversation; the message is the template's own."""


class Renderer:
    """Renders conversations with one tokenizer's chat template, in batches."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        from tailor.errors import TailorError

        if getattr(tokenizer, "backend_tokenizer", None) is None:
            raise TailorError(f"{type(tokenizer).__name__} is not a fast tokenizer; tailor renders datasets with "
                              "the fast (Rust) tokenizer. Give a model folder with a tokenizer.json.")
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn_text(tokenizer)
        # A private copy of the Rust tokenizer without its post-processor: with add_special_tokens
        # off it adds nothing anyway, and some (ByteLevel, Roberta) would trim the offsets we map by.
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.post_processor = None
        self._templates: dict = {}
        self._variables = dict(tokenizer.special_tokens_map)

    # -- text ------------------------------------------------------------------------------

    def _compiled(self, tools):
        """The compiled Jinja template and the variables apply_chat_template gives it. Calling it
        directly skips apply_chat_template's per-call normalisation (our messages are already
        plain dicts), about halving the render time; `_verify` in dataset.py checks the result
        against apply_chat_template itself."""
        template = self.tokenizer.get_chat_template(None, tools)
        if template not in self._templates:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self._templates[template] = _compile_jinja_template(template)
        return self._templates[template]

    def text(self, conv: Conversation, upto: int | None = None, generation_prompt: bool = False) -> str:
        messages = conv.template_messages()[:upto]
        try:
            return self._compiled(conv.tools).render(messages=messages, tools=conv.tools, documents=None,
                                                     add_generation_prompt=generation_prompt, **self._variables)
        except Exception as exc:  # Jinja's raise_exception, a missing key: the template's own words
            raise RenderError(str(exc) or type(exc).__name__) from exc

    def text_spans(self, conv: Conversation) -> TextSpans:
        spans = self._text_spans(conv)
        spans.lost_calls = sum(call["function"]["name"] not in spans.text for m in conv.messages
                               for call in m.extra.get("tool_calls") or ())
        return spans

    def _text_spans(self, conv: Conversation) -> TextSpans:
        full = self.text(conv)
        last = len(conv.messages) - 1
        spans = []
        for i, message in enumerate(conv.messages):
            if not (message.role == "assistant" and message.train):
                continue
            if i == 0:  # no prompt to diff against (a default system prompt may still precede it)
                return self._search_spans(conv, full)
            prompt = self.text(conv, i, generation_prompt=True)
            through = full if i == last else self.text(conv, i + 1)
            if not (full.startswith(through) and through.startswith(prompt)):
                return self._search_spans(conv, full)
            body = through[len(prompt):]
            # Whitespace after the end-of-turn marker is layout, never generated: not trained.
            spans.append((len(prompt), len(prompt) + len(body.rstrip())))
        return TextSpans(full, [s for s in spans if s[1] > s[0]], PREFIX_DIFF)

    def _search_spans(self, conv: Conversation, full: str) -> TextSpans:
        """Find each reply in the full text, in order: first as the text the template writes for
        it in a minimal chat (content plus end-of-turn marker), else as its bare content."""
        spans, missing, cursor = [], 0, 0
        for message in conv.messages:
            if message.role != "assistant":
                continue
            found = self._find_reply(message, full, cursor)
            if found is None:
                missing += message.train
                continue
            start, end, cursor = found
            if message.train:
                spans.append((start, end))
        return TextSpans(full, spans, CONTENT_SEARCH, missing)

    def _find_reply(self, message: Message, full: str, cursor: int) -> tuple[int, int, int] | None:
        """(start, end of the trained text, end of the reply) of `message` in `full` after `cursor`."""
        body = self._standalone_body(message)
        if body and body.strip():
            at = full.find(body, cursor)
            if at >= 0:
                return at, at + len(body.rstrip()), at + len(body)
        needle = message.content.strip()
        if not needle:
            return None
        tail = r"\s*" + re.escape(self.end_of_turn) if self.end_of_turn else ""
        match = re.compile(re.escape(needle) + tail).search(full, cursor) or re.compile(
            re.escape(needle)).search(full, cursor)
        return (match.start(), match.end(), match.end()) if match else None

    def _standalone_body(self, message: Message) -> str | None:
        """What the template writes for this reply after a one-line user turn."""
        probe = Conversation([Message("user", "Hi"), message], 0)
        try:
            prompt = self.text(probe, 1, generation_prompt=True)
            through = self.text(probe)
        except RenderError:
            return None
        return through[len(prompt):] if through.startswith(prompt) else None

    # -- tokens ----------------------------------------------------------------------------

    def render_batch(self, convs: list[Conversation]) -> list[Rendered | RenderError]:
        """Render many conversations with one batched tokenisation; a template refusal is
        returned in place of that conversation's result."""
        texts: list[TextSpans | RenderError] = []
        for conv in convs:
            try:
                texts.append(self.text_spans(conv))
            except RenderError as exc:
                texts.append(exc)
        good = [t for t in texts if isinstance(t, TextSpans)]
        encodings = iter(self.backend.encode_batch([t.text for t in good], add_special_tokens=False))
        out: list[Rendered | RenderError] = []
        for conv, t in zip(convs, texts):
            if isinstance(t, RenderError):
                out.append(t)
                continue
            enc = next(encodings)
            ids = np.asarray(enc.ids, dtype=np.int32)
            mask = encoding_mask(enc, t.spans)
            out.append(Rendered(ids, mask, conv.line, t.method, t.missing, t.lost_calls))
        return out

    def render(self, conv: Conversation) -> Rendered:
        result = self.render_batch([conv])[0]
        if isinstance(result, RenderError):
            raise result
        return result


def span_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """True for every token whose characters overlap a span (as transformers does for
    `return_assistant_tokens_mask`)."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not len(offsets):
        return mask
    starts, ends = offsets[:, 0], offsets[:, 1]
    for s0, s1 in spans:
        mask |= (ends > s0) & (starts < s1)
    return mask


def encoding_mask(enc, spans: list[tuple[int, int]]) -> np.ndarray:
    """span_mask for a tokenizers Encoding: the tokens holding each span's first and last
    character bound it (cheaper than pulling every offset into Python); where a character
    belongs to no token (a normaliser dropped it), the offsets decide."""
    mask = np.zeros(len(enc.ids), dtype=bool)
    for s0, s1 in spans:
        first, last = enc.char_to_token(s0), enc.char_to_token(s1 - 1)
        if first is None or last is None:
            return span_mask(np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), spans)
        mask[first:last + 1] = True
    return mask


def render_conversation(tokenizer, conv: Conversation) -> tuple[list[int], list[int]]:
    """The pure entry point: one conversation -> (input_ids, labels), labels -100 where not trained."""
    r = Renderer(tokenizer).render(conv)
    return r.ids.tolist(), r.labels.tolist()
