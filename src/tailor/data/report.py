"""What `tailor data check` and `tailor data show` print: a summary (text or one JSON object)
and one example with its trained tokens marked."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from tailor.data.dataset import Analysis, select
from tailor.data.formats import FORMAT_NAMES, Conversation
from tailor.data.problems import Problem, Problems

GREEN, DIM, RESET = "\033[1;32m", "\033[2m", "\033[0m"
OPEN, CLOSE = "[[", "]]"


def auto_epochs(n: int) -> int:
    """OpenAI's default for n_epochs="auto"."""
    if n <= 0:
        return 0
    if n * 3 < 100:
        return min(25, 100 // n)
    if n * 3 > 25000:
        return max(1, 25000 // n)
    return 3


def token_stats(analysis: Analysis, max_length: int | None, truncate: bool) -> dict | None:
    """Token counts over the rendered examples, and what max_length does to them."""
    store = analysis.store
    if store is None or not len(store.index):
        return None
    lengths, trained = store.index[:, 1], store.index[:, 2]
    over = int((lengths > max_length).sum()) if max_length else 0
    stats = {"per_example": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                             "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
             "total": int(lengths.sum()), "trained": int(trained.sum()),
             "max_length": max_length, "over_max_length": over}
    if over:
        rows, kept, notes = select(store, max_length, truncate)
        stats["over_max_length_action"] = "truncated" if truncate else "dropped"
        stats["examples_after_max_length"] = int(len(rows))
        stats["tokens_after_max_length"] = int(kept.sum())
    return stats


def add_length_warning(problems: Problems, analysis: Analysis, max_length: int | None, truncate: bool) -> None:
    if analysis.store is None or not max_length:
        return
    _, _, notes = select(analysis.store, max_length, truncate)
    for note in notes:
        problems.warning(0, "", "too_long", note, "raise --max-length, shorten those examples, or use --truncate"
                         if not truncate else "raise --max-length or shorten those examples")


def summary(analysis: Analysis, max_length: int | None = None, truncate: bool = False,
            model: str | None = None) -> dict:
    problems = analysis.problems
    n = len(analysis.store.index) if analysis.store is not None else len(analysis.parsed.conversations)
    out = {
        "file": str(analysis.parsed.path),
        "format": analysis.parsed.format,
        "format_name": FORMAT_NAMES.get(analysis.parsed.format or "", None),
        "lines": analysis.parsed.lines,
        "examples": n,
        "errors": problems.error_count,
        "warnings": len(problems.items) - problems.error_count,
        "errors_by_kind": dict(problems.by_kind("error")),
        "warnings_by_kind": dict(problems.by_kind("warning")),
        "epochs_auto": auto_epochs(n),
        "model": model,
        "problems": [p.to_json() for p in problems.sorted()],
    }
    if analysis.template_warning:
        out["template_warning"] = analysis.template_warning
    stats = token_stats(analysis, max_length, truncate)
    if stats:
        out["tokens"] = stats
    return out


def format_summary(s: dict) -> str:
    """The human text of `summary`: every problem, then the numbers."""
    lines = [f"{s['file']}: {s['errors']} error(s), {s['warnings']} warning(s)"]
    lines += ["  " + Problem(**p).text() for p in s["problems"]]
    lines.append("")
    lines.append(f"format:    {s['format_name'] or 'unknown'}")
    lines.append(f"examples:  {s['examples']} valid of {s['lines']} line(s)")
    for kind in ("errors", "warnings"):
        if s[f"{kind}_by_kind"]:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(s[f"{kind}_by_kind"].items()))
            lines.append(f"{kind + ':':<10} {counts}")
    if s.get("template_warning"):
        lines.append(f"template:  {s['template_warning']}")
    t = s.get("tokens")
    if t:
        pe = t["per_example"]
        lines.append(f"tokens:    per example min {pe['min']} / median {pe['median']:g} / p95 {pe['p95']:g} / "
                     f"max {pe['max']} ({s['model']})")
        lines.append(f"           total {t['total']}, trained (assistant) {t['trained']} "
                     f"({100 * t['trained'] / max(1, t['total']):.1f}%)")
        if t["max_length"]:
            fate = t.get("over_max_length_action", "dropped")
            lines.append(f"           over max_length={t['max_length']}: {t['over_max_length']} example(s)"
                         + (f", {fate}" if t["over_max_length"] else ""))
    lines.append(f"epochs:    {s['epochs_auto']} with n_epochs=auto (OpenAI's rule for {s['examples']} examples)")
    return "\n".join(lines)


def to_json(s: dict) -> str:
    return json.dumps(s, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# data show


@dataclass
class Marked:
    """A conversation as the model sees it: its text in runs, each trained on or not."""

    runs: list[tuple[str, bool]]
    tokens: int
    trained_tokens: int
    method: str  # how the spans were found (render.PREFIX_DIFF or CONTENT_SEARCH)
    lost_calls: int  # tool calls the template did not write


def marked(renderer, conv: Conversation) -> Marked:
    """Runs of trained and untrained text. Marks follow the tokens, so a partly-trained token
    counts whole: what `data show` highlights and the dashboard draws."""
    from tailor.data.render import span_mask

    spans = renderer.text_spans(conv)
    enc = renderer.backend.encode(spans.text, add_special_tokens=False)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    mask = span_mask(offsets, spans.spans)
    trained = np.zeros(len(spans.text), dtype=bool)
    for (a, b), m in zip(offsets, mask):
        if m:
            trained[a:b] = True
    runs, start = [], 0
    for i in range(1, len(spans.text) + 1):
        if i == len(spans.text) or trained[i] != trained[start]:
            runs.append((spans.text[start:i], bool(trained[start])))
            start = i
    return Marked(runs, len(enc.ids), int(mask.sum()), spans.method, spans.lost_calls)


def show(renderer, conv: Conversation, color: bool) -> str:
    """The conversation as the model sees it, trained characters highlighted (colour) or wrapped
    in [[ ]] (no terminal)."""
    m = marked(renderer, conv)
    on, off = (GREEN, RESET) if color else (OPEN, CLOSE)
    body = "".join(on + text + off if trained else text for text, trained in m.runs)
    legend = (f"{GREEN}green{RESET} = trained on" if color else f"{OPEN}...{CLOSE} = trained on")
    head = f"line {conv.line}: {m.tokens} tokens, {m.trained_tokens} trained ({legend}; spans by {m.method})"
    if m.lost_calls:
        head += (f"\nwarning: the chat template does not write tool calls; {m.lost_calls} call(s) are "
                 "missing from what the model sees")
    return head + "\n" + body
