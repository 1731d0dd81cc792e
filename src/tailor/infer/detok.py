"""Incremental detokenisation: text deltas from a growing list of token ids.

Decoding token by token breaks multi-byte characters and word-joining rules, so each step
decodes a short window and emits only the new, complete text.
"""

from __future__ import annotations


class StreamDecoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self.ids.append(token_id)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.endswith("\ufffd"):  # an unfinished UTF-8 sequence: wait for the next byte
            return ""
        delta = full[len(self.text):]
        self.text = full
        return delta
