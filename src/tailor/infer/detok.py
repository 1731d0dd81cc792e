"""Incremental detokenisation and stop strings: text deltas from a growing list of token ids.

Decoding token by token breaks multi-byte characters and word-joining rules (SentencePiece's
leading spaces), so each step decodes a short window that starts one token before the new
ones and emits only the new, complete text. The cost per token stays constant however long
the reply grows.
"""

from __future__ import annotations


class StreamDecoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: one token of context before the unread ones
        self.read = 0  # ids before this are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):  # an unfinished UTF-8 sequence
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]

    def flush(self) -> str:
        """Whatever is left undecoded at the end (a broken character shows as U+FFFD)."""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


class TextStream:
    """Detokenise and watch for stop strings. Text that might be the start of a stop string is
    held back until it is clear, so a client never sees part of a stop string."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in (stop or []) if s]
        self.held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Text released by this token; sets `stopped` when a stop string completes."""
        self.held += self.decoder.push(token_id)
        return self._release()

    def _release(self) -> str:
        cut = min((self.held.find(s) for s in self.stop if s in self.held), default=-1)
        if cut >= 0:
            out, self.held, self.stopped = self.held[:cut], "", True
            return out
        keep = max((partial_suffix(self.held, s) for s in self.stop), default=0)
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep:]
        return out

    def finish(self) -> str:
        """The held-back tail, at the end of generation (nothing after a stop string)."""
        if self.stopped:
            return ""
        self.held += self.decoder.flush()
        out = self._release()
        if self.stopped:
            return out
        out, self.held = out + self.held, ""
        return out


def partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
