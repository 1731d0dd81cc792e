"""Pure scores for one answer against its reference: SQuAD-style normalisation, exact match and
contains. No model here, so they are tested on hand-made strings."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014")
# RAFT-trained models reason over the documents first and end with the answer: "... Answer: X"
# (the RAFT paper's own marker is "<ANSWER>: X"). The text after the last marker is the answer.
_ANSWER_MARK = re.compile(r"(?:<answer>|\banswer)\s*:", re.IGNORECASE)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalize_answer)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def final_answer(output: str) -> str | None:
    """The text after the last "Answer:" (or "<ANSWER>:") in `output`, or None without one."""
    marks = list(_ANSWER_MARK.finditer(output))
    return output[marks[-1].end():].strip() if marks else None


def exact_match(output: str, reference: str) -> bool:
    """The whole output, or its final "Answer: ..." part, equals the reference once normalised."""
    ref = normalize(reference)
    candidates = [output] + [a for a in [final_answer(output)] if a is not None]
    return any(normalize(c) == ref for c in candidates)


def contains(output: str, reference: str) -> bool:
    """The normalised reference appears in the normalised output as whole words ("4" is not
    found in "1940"). An empty reference is never contained."""
    ref = normalize(reference)
    return bool(ref) and f" {ref} " in f" {normalize(output)} "
