"""Datasets: read and validate JSONL files, render conversations into (input_ids, labels).

The trainer's entry point is `prepare(path, tokenizer, ...)`; `conversations(path)` gives the
parsed examples (for sample generation at eval time). Both raise DataError, whose text is
the full line-numbered report that `tailor data check` prints. Three kinds of data: chat
(supervised), preference (pairs for DPO) and raw text (continued pretraining); see formats.py.
"""

from tailor.data.dataset import DataError, Example, Pair, Prepared, analyse, conversations, prepare
from tailor.data.formats import Conversation, Message, Preference, Text

__all__ = ["Conversation", "DataError", "Example", "Message", "Pair", "Preference", "Prepared", "Text", "analyse",
           "conversations", "prepare"]
