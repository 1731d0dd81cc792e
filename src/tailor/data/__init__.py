"""Datasets: read and validate JSONL files, render conversations into (input_ids, labels).

The trainer's entry point is `prepare(path, tokenizer, ...)`; `conversations(path)` gives the
parsed conversations (for sample generation at eval time). Both raise DataError, whose text is
the full line-numbered report that `tailor data check` prints.
"""

from tailor.data.dataset import DataError, Example, Prepared, analyse, conversations, prepare
from tailor.data.formats import Conversation, Message

__all__ = ["Conversation", "DataError", "Example", "Message", "Prepared", "analyse", "conversations", "prepare"]
