"""RAFT-style training data (Zhang et al. 2024, "RAFT: Adapting Language Model to Domain Specific
RAG"): each question is shown with its oracle chunk (the one holding the answer) among distractor
chunks, in exactly the prompt format retrieval uses when serving (context.add_context), so the model
learns to find and quote the relevant document and to ignore the rest.

Choices, and why:
- Distractors are half hard (the index's top hits for the question that are not the oracle: what
  retrieval really serves next to it) and half random (RAFT's recipe: plain off-topic noise). Chunks
  that contain the answer are never distractors, or an "oracle left out" example would still hold it.
- With probability 1-P the oracle is replaced by one more random distractor, as in RAFT; then the
  documents are shuffled so position says nothing.
- The target quotes the sentence(s) of the oracle that hold the answer, then the answer:
      According to SOURCE: "QUOTE"
      Answer: ANSWER
  RAFT's own targets are long chain-of-thought with ##begin_quote## markers; small models learn the
  short form more easily, and it keeps the quote checkable. Without the oracle the target is only
  "Answer: ANSWER": RAFT keeps the answer there so the model also memorises the domain (the paper
  finds P < 1 better than always showing the oracle), but quoting a document that is not in the
  prompt would teach the model to invent quotes.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailor.errors import TailorError
from tailor.rag.context import add_context
from tailor.rag.index import Hit, Index

# A sentence ends at . ! ? and a space, except after an initial or a title ("J.", "Dr.", "Mrs.", "e.g.").
_SENTENCE = re.compile(r"(?<!\b[A-Z]\.)(?<!\b[A-Z][a-z]\.)(?<!\b[A-Z][a-z]{2}\.)(?<!\be\.g\.)(?<!\bi\.e\.)"
                       r"(?<=[.!?])\s+")
# Where a new line starts a new unit: a blank line, or a list item / heading / table row.
_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*+#|>]|\d+[.)])\s)")


@dataclass(frozen=True)
class Question:
    line: int
    question: str
    answer: str
    source: str | None


@dataclass
class RaftReport:
    examples: int
    with_oracle: int
    hard: int          # hard distractors per example (at most)
    random: int        # random distractors per example (at most)
    out: Path

    def summary(self, p: float) -> str:
        share = self.with_oracle / self.examples if self.examples else 0.0
        return (f"{self.examples} examples, {self.with_oracle} with the oracle chunk ({share:.2f}; --p {p}); "
                f"distractors per example: {self.hard} hard + {self.random} random")


def read_questions(path: Path) -> list[Question]:
    """Every line as a Question; one TailorError listing every bad line."""
    if not path.is_file():
        raise TailorError(f"{path}: no such file.")
    questions, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: must be a JSON object, not {type(record).__name__}")
            continue
        bad = [f"field '{f}' must be a non-empty string" for f in ("question", "answer")
               if not isinstance(record.get(f), str) or not record[f].strip()]
        if record.get("source") is not None and not isinstance(record["source"], str):
            bad.append("field 'source' must be a string (a document name) or left out")
        problems.extend(f"{path}:{number}: {b}" for b in bad)
        if not bad:
            questions.append(Question(number, record["question"].strip(), record["answer"].strip(),
                                      record.get("source") or None))
    if not questions and not problems:
        problems.append(f"{path}: holds no questions")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise TailorError("bad questions file (each line: "
                          '{"question": "...", "answer": "...", "source": "optional document"}):\n  '
                          + "\n  ".join(shown))
    return questions


def build_rag_data(index: Index, questions: list[Question], out: Path, *, p: float = 0.8, distractors: int = 3,
                   seed: int = 0, style: str = "system") -> RaftReport:
    """Write one OpenAI chat example per question to `out` (atomically)."""
    if not 0.0 <= p <= 1.0:
        raise TailorError(f"--p is a probability, from 0 to 1, not {p}.")
    if distractors < 0:
        raise TailorError(f"--distractors must be 0 or more, not {distractors}.")
    everything = index.chunks()
    if not everything:
        raise TailorError(f"{index.path}: the index holds no chunks.")
    n_hard = (distractors + 1) // 2
    rng = random.Random(seed)
    oracles = find_oracles(index, questions)
    asked = index.embedder.encode([q.question for q in questions])
    lines, with_oracle = [], 0
    for q, oracle, vector in zip(questions, oracles, asked):
        keep = rng.random() < p
        docs = _distractors(index, everything, q, oracle, vector, n_hard, distractors + (not keep), rng)
        if keep:
            docs.append(oracle)
            with_oracle += 1
        rng.shuffle(docs)
        messages = add_context([{"role": "user", "content": q.question}], docs, style)
        messages.append({"role": "assistant", "content": target(index, q, oracle if keep else None)})
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    _write(out, lines)
    return RaftReport(len(lines), with_oracle, n_hard, distractors - n_hard, out)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def holds(text: str, answer: str) -> bool:
    """Whether `text` says `answer` in so many words (case and spacing aside; "two" is not in "network")."""
    return re.search(rf"(?<!\w){re.escape(_norm(answer))}(?!\w)", _norm(text)) is not None


def find_oracles(index: Index, questions: list[Question]) -> list[Hit]:
    """Per question, the chunk that answers it: among `source`'s chunks when given (else the whole
    index), the best match for question + answer that contains the answer, else the best match."""
    sources = index.sources()
    vectors = index.embedder.encode([f"{q.question} {q.answer}" for q in questions])
    oracles, problems = [], []
    for q, vector in zip(questions, vectors):
        source = None
        if q.source is not None:
            source = _resolve_source(q.source, sources)
            if source is None:
                problems.append(f"line {q.line}: source {q.source!r} is not in the index "
                                f"(it holds {', '.join(sources[:8])}{', ...' if len(sources) > 8 else ''})")
                continue
        hits = index.search_vector(vector, 10 if source is None else 100_000, source)
        if not hits:
            problems.append(f"line {q.line}: source {source!r} has no text in the index")
            continue
        oracles.append(next((h for h in hits if holds(h.text, q.answer)), hits[0]))
    if problems:
        raise TailorError("cannot build RAFT data:\n  " + "\n  ".join(problems))
    return oracles


def _resolve_source(given: str, sources: list[str]) -> str | None:
    """The index's name for a document: exact, else the one source ending in /GIVEN."""
    if given in sources:
        return given
    matches = [s for s in sources if s.endswith("/" + given.lstrip("./"))]
    return matches[0] if len(matches) == 1 else None


def _distractors(index: Index, everything: list[Hit], q: Question, oracle: Hit, vector: np.ndarray,
                 n_hard: int, total: int, rng: random.Random) -> list[Hit]:
    usable = lambda h: h.chunk_id != oracle.chunk_id and not holds(h.text, q.answer)  # noqa: E731
    hard = [h for h in index.search_vector(vector, n_hard + 8) if usable(h)][:n_hard]
    taken = {h.chunk_id for h in hard}
    pool = [h for h in everything if usable(h) and h.chunk_id not in taken]
    picked = rng.sample(pool, min(total - len(hard), len(pool)))
    # Chunks from chunks() and from search differ only in score, which the prompt never shows.
    return hard + picked


def target(index: Index, q: Question, oracle: Hit | None) -> str:
    if oracle is None:
        return f"Answer: {q.answer}"
    return f'According to {oracle.source}: "{quote(index, oracle, q)}"\nAnswer: {q.answer}'


def quote(index: Index, oracle: Hit, q: Question) -> str:
    """The shortest run of the oracle's sentences holding the answer; when the answer is not
    written out in it, the sentence closest in meaning to question + answer."""
    body = oracle.text[len(oracle.heading):] if oracle.heading and oracle.text.startswith(oracle.heading) \
        else oracle.text
    # Hard-wrapped lines (common in Markdown) are joined first, so a quote is never cut at a wrap.
    units = [" ".join(u.split()) for u in _BREAK.split(body)]
    sentences = [s for u in units for s in _SENTENCE.split(u) if s]
    if not sentences:
        return body.strip()
    for width in range(1, len(sentences) + 1):
        for start in range(len(sentences) - width + 1):
            run = " ".join(sentences[start:start + width])
            if holds(run, q.answer):
                return run
    scores = index.embedder.encode(sentences) @ index.embedder.encode([f"{q.question} {q.answer}"])[0]
    return sentences[int(np.argmax(scores))]


def _write(out: Path, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(out)
