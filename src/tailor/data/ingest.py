"""Render a parsed file into a store, in batches, by its kind; what the tokenizer or the chat
template refuses becomes a problem on its line.

  chat        one row per conversation: its tokens, trained where the assistant replies are
  preference  two rows per pair: the prompt with the chosen reply, then with the rejected one,
              each trained on its reply (and end-of-turn marker) only
  text        one row per document: its tokens and an EOS, every one trained
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from tailor.data import formats
from tailor.data.cache import StoreWriter
from tailor.data.problems import Problems
from tailor.data.render import CONTENT_SEARCH, Renderer, RenderError
from tailor.errors import TailorError

BATCH = 1000  # items per tokenizer call: big enough for the Rust batch, small in memory


def render_into(writer: StoreWriter, parsed: formats.Parsed, tokenizer) -> None:
    if parsed.kind == "text":
        return _texts(writer, parsed, tokenizer)
    renderer = Renderer(tokenizer)
    problems = parsed.problems
    convs = (parsed.conversations if parsed.kind == "chat"
             else [p.conversation(which) for p in parsed.pairs for which in ("chosen", "rejected")])
    _check_control_tokens(tokenizer, convs, problems)
    per_item = 1 if parsed.kind == "chat" else 2  # a pair's two rows are written together or not at all
    methods: Counter = Counter()
    for at in range(0, len(convs), BATCH * per_item):
        batch = convs[at:at + BATCH * per_item]
        results = renderer.render_batch(batch)
        if at == 0:
            _verify(tokenizer, batch, results)
        for k in range(0, len(batch), per_item):
            rendered = []
            for r in results[k:k + per_item]:
                if not _usable(batch[k].line, r, problems, parsed.kind):
                    break  # one problem per line: a pair's other reply is not reported again
                rendered.append(r)
            if len(rendered) < per_item:
                continue
            for r in rendered:
                methods[r.method] += 1
                _render_warnings(batch[k].line, r, problems)
                writer.add(r.ids, r.mask, r.line)
        del batch, results
    if methods[CONTENT_SEARCH]:
        problems.warning(0, "", "template_rewrites_turns",
                         f"{methods[CONTENT_SEARCH]} example(s): the chat template rewrites earlier turns, so their "
                         "reply spans were found by searching each reply's text in the full rendering "
                         "(content-search) instead of by prefix differences",
                         "nothing to do if `tailor data show` marks the right tokens")
    if renderer.end_of_turn is None:
        problems.warning(0, "", "no_end_of_turn", "the chat template writes nothing after an assistant reply, "
                         "so the model will not learn to stop", "use a template that ends each turn with EOS")


def _usable(line: int, r, problems: Problems, kind: str) -> bool:
    if isinstance(r, RenderError):
        problems.error(line, "messages" if kind == "chat" else "", "template_error",
                       f"the chat template refused this conversation: {r}",
                       "change the conversation to what the template accepts (e.g. roles alternating "
                       "user/assistant, no system message), or pick another --chat-template")
        return False
    if not r.mask.any():
        problems.error(line, "messages" if kind == "chat" else "", "empty_mask",
                       "after rendering with the chat template no token is trained on "
                       "(the template drops the assistant text)",
                       "check the assistant messages' content, or pick another --chat-template")
        return False
    return True


def _render_warnings(line: int, r, problems: Problems) -> None:
    if r.missing:
        problems.warning(line, "messages", "reply_not_found",
                         f"{r.missing} assistant reply(ies) not found in the template's rendering; "
                         "they are not trained on", "check the chat template")
    if r.lost_calls:
        problems.warning(line, "messages", "tool_calls_not_rendered",
                         f"the chat template does not write tool calls ({r.lost_calls} lost), so the "
                         "model would learn replies without them",
                         "use a model whose template supports tools, or remove tool examples")


def _texts(writer: StoreWriter, parsed: formats.Parsed, tokenizer) -> None:
    """Documents as the tokenizer encodes text (with the BOS it adds, if any), each ended by EOS
    so the model learns where a document stops and the next one, packed after it, starts."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TailorError("This tokenizer has no EOS token, which raw-text training puts after each document; "
                          "use a model whose tokenizer defines eos_token.")
    texts = parsed.texts
    _control_tokens_in(tokenizer, [(t.line, "text", t.text) for t in texts], parsed.problems)
    for at in range(0, len(texts), BATCH):
        batch = texts[at:at + BATCH]
        for item, enc in zip(batch, tokenizer.backend_tokenizer.encode_batch([t.text for t in batch],
                                                                             add_special_tokens=True)):
            ids = np.asarray(enc.ids + ([] if enc.ids and enc.ids[-1] == eos else [eos]), dtype=np.int32)
            writer.add(ids, np.ones(len(ids), dtype=bool), item.line)


def _check_control_tokens(tokenizer, convs, problems: Problems) -> None:
    found = [(conv.line, f"messages[{i}].content", m.content) for conv in convs for i, m in enumerate(conv.messages)]
    _control_tokens_in(tokenizer, found, problems)


def _control_tokens_in(tokenizer, texts, problems: Problems) -> None:
    """Text such as "<|im_end|>" inside a message is tokenised as the control token itself, so the
    model would learn turn boundaries where there are none."""
    specials = sorted({t for t in tokenizer.all_special_tokens} | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)
    if not specials:
        return
    pattern = re.compile("|".join(map(re.escape, specials)))
    seen = set()
    for line, path, text in texts:
        hit = pattern.search(text)
        if hit and (line, path) not in seen:  # a pair's prompt is rendered twice: report it once
            seen.add((line, path))
            problems.warning(line, path, "control_token_in_content",
                             f"the text contains {hit.group()!r}, which the tokenizer reads as a control token",
                             "remove it or write it differently; the model would learn a false turn boundary")


def _verify(tokenizer, batch, results) -> None:
    """The first example must tokenise exactly as apply_chat_template does; a mismatch is a bug
    in this module, reported as such rather than training on shifted masks."""
    for conv, r in zip(batch, results):
        if isinstance(r, RenderError):
            continue
        want = tokenizer.apply_chat_template(conv.template_messages(), tools=conv.tools, tokenize=True,
                                             return_dict=False)
        if list(want) != r.ids.tolist():
            raise TailorError(f"internal error: the rendering of line {conv.line} differs from the tokenizer's "
                              "apply_chat_template; please report this with the model and the line")
        return
