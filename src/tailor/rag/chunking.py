"""Documents into chunks: read .txt / .md / .jsonl / .pdf into sections, then cut each section into
windows of at most `chunk_tokens` tokens of the embedding model's own tokenizer, overlapping by about
`overlap` tokens. Windows end on word boundaries (a sentence end when one is near), and each chunk
starts with its section's heading path ("Intro > Setup"), so a chunk read alone still says what it is
about: that helps both the embedding and the model reading it. The heading counts toward the limit.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import TailorError

SUPPORTED = (".txt", ".md", ".markdown", ".jsonl", ".pdf")
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*$")


@dataclass(frozen=True)
class Section:
    heading: str   # heading path, "" when none
    text: str


@dataclass(frozen=True)
class Chunk:
    heading: str
    text: str      # heading line first (when there is one), then the window of the section's text


def read_sections(path: Path) -> list[Section]:
    """The document's text as sections. TailorError naming the file (and line) when unreadable."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise TailorError(f"{path}: unsupported file type {suffix or '(none)'}; "
                          f"tailor index reads {', '.join(SUPPORTED)}.")
    if suffix == ".pdf":
        return _pdf_sections(path)
    text = _read_text(path)
    if suffix == ".jsonl":
        return _jsonl_sections(path, text)
    if suffix in (".md", ".markdown"):
        return markdown_sections(text)
    return [Section("", text.strip())] if text.strip() else []


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TailorError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8.") from exc


def markdown_sections(text: str) -> list[Section]:
    """Split at ATX headings (`# A`, `## B`), outside code fences; each section carries the path of
    headings above it. (Setext headings, underlined with === or ---, are read as plain text.)"""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def flush():
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(" > ".join(h for _, h in path), body))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _ATX.match(line)
        if heading is None:
            lines.append(line)
            continue
        flush()
        level = len(heading.group(1))
        path = [(lv, h) for lv, h in path if lv < level] + [(level, heading.group(2))]
    flush()
    return sections


def _jsonl_sections(path: Path, text: str) -> list[Section]:
    """One section per line's `text` field (an optional `title` field becomes its heading)."""
    sections = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TailorError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be an object "
                              f'like {{"text": "..."}}.') from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            got = type(record.get("text")).__name__ if isinstance(record, dict) and "text" in record else "missing"
            raise TailorError(f"{path}:{number}: field 'text' must be a string ({got}); each line must be an "
                              f'object like {{"text": "..."}}.')
        title = record.get("title")
        if record["text"].strip():
            sections.append(Section(title.strip() if isinstance(title, str) else "", record["text"].strip()))
    return sections


def _pdf_sections(path: Path) -> list[Section]:
    """One section per page with text, headed "page N" (PDFs carry no reliable heading structure)."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:
        raise TailorError(f"{path}: reading PDFs needs pypdf: pip install pypdf") from exc
    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise TailorError(f"{path}: not a readable PDF ({exc}).") from exc
    return [Section(f"page {i}", text.strip()) for i, text in enumerate(pages, 1) if text.strip()]


def check_settings(chunk_tokens: int, overlap: int) -> None:
    if chunk_tokens < 8:
        raise TailorError(f"--chunk-tokens must be at least 8, not {chunk_tokens}.")
    if not 0 <= overlap < chunk_tokens // 2:
        raise TailorError(f"--overlap must be from 0 to under half of --chunk-tokens ({chunk_tokens}), "
                          f"not {overlap}.")


def chunk_sections(sections: list[Section], tokenizer, chunk_tokens: int, overlap: int) -> list[Chunk]:
    check_settings(chunk_tokens, overlap)
    chunks = []
    for section in sections:
        heading = section.heading
        budget = chunk_tokens - _count(tokenizer, heading + "\n\n") if heading else chunk_tokens
        if budget < chunk_tokens // 2 and " > " in heading:  # a deep path would crowd out the text
            heading = heading.rsplit(" > ", 1)[1]
            budget = chunk_tokens - _count(tokenizer, heading + "\n\n")
        budget = max(budget, chunk_tokens // 4)
        for body in split_tokens(section.text, tokenizer, budget, min(overlap, budget // 2)):
            chunks.append(Chunk(heading, f"{heading}\n\n{body}" if heading else body))
    return chunks


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_tokens(text: str, tokenizer, budget: int, overlap: int) -> list[str]:
    """Windows of whole words, each at most `budget` tokens, the next starting about `overlap`
    tokens before the previous one ended. A window ends at a sentence end in its last quarter when
    there is one, so quotes and answers are less often cut mid-sentence."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if not words:
        return []
    counts = _tokens_per_word(text, words, tokenizer)
    out, i = [], 0
    while i < len(words):
        j, used = i, 0
        while j < len(words) and used + counts[j] <= budget:
            used += counts[j]
            j += 1
        if j == i:  # one "word" longer than the budget (a URL, a hash): cut it by characters
            out.extend(_cut_word(text[words[i][0]:words[i][1]], tokenizer, budget))
            i += 1
            continue
        if j < len(words):
            j = _sentence_end(text, words, i, j)
        out.append(text[words[i][0]:words[j - 1][1]])
        if j >= len(words):
            break
        back, k = 0, j
        while k - 1 > i and back + counts[k - 1] <= overlap:
            k -= 1
            back += counts[k]
        i = k
    return out


def _tokens_per_word(text: str, words: list[tuple[int, int]], tokenizer) -> list[int]:
    starts = [s for s, _ in words]
    counts = [0] * len(words)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for start, end in offsets:
        if end > start:
            counts[bisect_right(starts, start) - 1] += 1
    return counts


def _sentence_end(text: str, words, i: int, j: int) -> int:
    for m in range(j, i + max(1, 3 * (j - i) // 4), -1):
        if _SENTENCE_END.search(text[words[m - 1][0]:words[m - 1][1]]):
            return m
    return j


def _cut_word(word: str, tokenizer, budget: int) -> list[str]:
    offsets = [o for o in tokenizer(word, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
               if o[1] > o[0]]
    return [word[offsets[a][0]:offsets[min(a + budget, len(offsets)) - 1][1]] for a in range(0, len(offsets), budget)]
