"""What `tailor data check` and `tailor data show` print: a summary (text or one JSON object)
and one example with its trained tokens marked (a preference pair: both of its completions)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from tailor.data.dataset import Analysis
from tailor.data.examples import select, select_pairs, text_rows
from tailor.data.formats import FORMAT_NAMES, Conversation, Preference, Text, kind_of
from tailor.data.problems import Problem, Problems
from tailor.data.prompts import Prompt

KIND_NAMES = {"chat": "supervised examples (tailor train --objective sft)",
              "preference": "preference pairs (tailor train --objective dpo)",
              "prompt": "RFT prompts (tailor train --objective grpo: replies are sampled and graded)",
              "text": "raw text (tailor train --objective sft: continued pretraining; every token is trained, "
                      "the documents packed end to end into rows of --max-length)"}

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
    """Token counts over the rendered examples (a pair's two sequences together), and what
    max_length does to them."""
    store = analysis.store
    if store is None or not len(store.index):
        return None
    kind = kind_of(store.meta["format"])
    lengths, trained = store.index[:, 1], store.index[:, 2]
    if kind == "preference":
        lengths, trained = lengths[0::2] + lengths[1::2], trained[0::2] + trained[1::2]
    stats = {"per_example": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                             "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
             "total": int(lengths.sum()), "trained": int(trained.sum()), "max_length": max_length}
    if kind == "text":  # nothing is dropped: the documents are packed into rows
        stats["rows"] = len(text_rows(store, max_length))
        return stats
    if kind == "preference":
        longest = np.maximum(store.index[0::2, 1], store.index[1::2, 1])
        stats["over_max_length"] = int((longest > max_length).sum()) if max_length else 0
    else:
        stats["over_max_length"] = int((lengths > max_length).sum()) if max_length else 0
    if stats["over_max_length"]:
        if kind == "preference":
            pairs, _ = select_pairs(store, max_length, truncate)
            kept, tokens = len(pairs), int(pairs.lengths.sum())
        else:
            rows, kept_lengths, _ = select(store, max_length, truncate)
            kept, tokens = int(len(rows)), int(kept_lengths.sum())
        stats["over_max_length_action"] = "truncated" if truncate else "dropped"
        stats["examples_after_max_length"] = kept
        stats["tokens_after_max_length"] = tokens
    return stats


def add_length_warning(problems: Problems, analysis: Analysis, max_length: int | None, truncate: bool) -> None:
    if analysis.store is None or not max_length:
        return
    kind = kind_of(analysis.store.meta["format"])
    if kind == "preference":
        notes = list(select_pairs(analysis.store, max_length, truncate)[1].items())
    else:
        notes = [("too_long", note) for note in select(analysis.store, max_length, truncate)[2]] if kind == "chat" else []
    fixes = {"prompt_too_long": "shorten those prompts or raise --max-length (--truncate cannot keep them)",
             "too_long": "raise --max-length, shorten those examples, or use --truncate" if not truncate
             else "raise --max-length or shorten those examples"}
    for name, note in notes:
        problems.warning(0, "", name, note, fixes[name])


def summary(analysis: Analysis, max_length: int | None = None, truncate: bool = False,
            model: str | None = None) -> dict:
    problems = analysis.problems
    kind = analysis.parsed.kind
    if analysis.store is not None:
        n = len(analysis.store.index) // (2 if kind == "preference" else 1)
    else:
        n = len(analysis.parsed.items)
    out = {
        "file": str(analysis.parsed.path),
        "format": analysis.parsed.format,
        "format_name": FORMAT_NAMES.get(analysis.parsed.format or "", None),
        "kind": kind,
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
    if s["format"]:
        lines.append(f"kind:      {KIND_NAMES[s['kind']]}")
    pairs = " pairs" if s["kind"] == "preference" else ""
    lines.append(f"examples:  {s['examples']} valid{pairs} of {s['lines']} line(s)")
    for kind in ("errors", "warnings"):
        if s[f"{kind}_by_kind"]:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(s[f"{kind}_by_kind"].items()))
            lines.append(f"{kind + ':':<10} {counts}")
    if s.get("template_warning"):
        lines.append(f"template:  {s['template_warning']}")
    t = s.get("tokens")
    if t:
        lines += _token_lines(t, s["kind"], s["model"])
    if s.get("grader_item_keys") is not None:
        keys = ", ".join(f"{{{{ {k} }}}}" for k in s["grader_item_keys"]) or "none"
        lines.append(f"grader:    reads {keys} from each line")
    lines.append(f"epochs:    {s['epochs_auto']} with n_epochs=auto (OpenAI's rule for {s['examples']} examples)")
    return "\n".join(lines)


def prompt_tokens(items: list, tokenizer, max_length: int | None) -> dict:
    """Token counts of RFT prompts as training renders them (the assistant's opening included);
    with max_length, how many leave no room for a reply."""
    from tailor.data.templates import render_prompt

    lengths = np.array([len(render_prompt(tokenizer, p.template_messages(), p.tools)) for p in items])
    return {"per_example": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
            "total": int(lengths.sum()), "trained": 0, "max_length": max_length,
            "over_max_length": int((lengths >= max_length).sum()) if max_length else 0}


def _token_lines(t: dict, kind: str, model: str | None) -> list[str]:
    pe = t["per_example"]
    if kind == "prompt":
        out = [f"tokens:    per prompt min {pe['min']} / median {pe['median']:g} / p95 {pe['p95']:g} / max {pe['max']} "
               f"({model}); total {t['total']} (the replies are sampled in training)"]
        if t["max_length"]:
            out.append(f"           at or over max_length={t['max_length']}: {t['over_max_length']} prompt(s) (no "
                       "room for a reply: dropped in training, with --max-length minus --max-completion-tokens)")
        return out
    per = {"chat": "example", "preference": "pair (both sequences)", "text": "document"}[kind]
    trained = {"chat": "trained (assistant)", "preference": "trained (the completions)",
               "text": "trained (every token)"}[kind]
    out = [f"tokens:    per {per} min {pe['min']} / median {pe['median']:g} / p95 {pe['p95']:g} / max {pe['max']} "
           f"({model})", f"           total {t['total']}, {trained} {t['trained']} "
           f"({100 * t['trained'] / max(1, t['total']):.1f}%)"]
    if kind == "text":
        if t["max_length"]:
            out.append(f"           packed into {t['rows']} row(s) of up to max_length={t['max_length']} tokens")
        return out
    if t["max_length"]:
        fate = t.get("over_max_length_action", "dropped")
        out.append(f"           over max_length={t['max_length']}: {t['over_max_length']} "
                   f"{'pair' if kind == 'preference' else 'example'}(s)" + (f", {fate}" if t["over_max_length"] else ""))
    return out


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


def show(renderer, item, color: bool) -> str:
    """The example as the model sees it, trained characters highlighted (colour) or wrapped in
    [[ ]] (no terminal): a conversation, both completions of a preference pair, or raw text."""
    on, off = (GREEN, RESET) if color else (OPEN, CLOSE)
    legend = (f"{GREEN}green{RESET} = trained on" if color else f"{OPEN}...{CLOSE} = trained on")
    if isinstance(item, Text):
        return _show_text(renderer.tokenizer, item, on, off, legend)
    if isinstance(item, Prompt):
        return _show_prompt(renderer.tokenizer, item)
    if isinstance(item, Preference):
        parts = [(which, marked(renderer, item.conversation(which))) for which in ("chosen", "rejected")]
        head = (f"line {item.line}: preference pair; " + "; ".join(
            f"{which} {m.tokens} tokens, {m.trained_tokens} trained" for which, m in parts) + f" ({legend})")
        body = "".join(f"\n--- {which} ---\n" + _body(m, on, off) for which, m in parts)
        return head + _lost_calls(sum(m.lost_calls for _, m in parts)) + body
    m = marked(renderer, item)
    head = f"line {item.line}: {m.tokens} tokens, {m.trained_tokens} trained ({legend}; spans by {m.method})"
    return head + _lost_calls(m.lost_calls) + "\n" + _body(m, on, off)


def _body(m: Marked, on: str, off: str) -> str:
    return "".join(on + text + off if trained else text for text, trained in m.runs)


def _lost_calls(n: int) -> str:
    if not n:
        return ""
    return (f"\nwarning: the chat template does not write tool calls; {n} call(s) are missing from what the "
            "model sees")


def _show_prompt(tokenizer, item: Prompt) -> str:
    """An RFT prompt as the model sees it (the assistant's opening last: the reply is sampled in
    training, so nothing here is trained), and the item its grader reads."""
    from tailor.data.templates import render_prompt

    ids = render_prompt(tokenizer, item.template_messages(), item.tools)
    keys = {k: v for k, v in item.item.items() if k not in ("messages", "tools", "parallel_tool_calls")}
    return (f"line {item.line}: RFT prompt, {len(ids)} tokens (the reply is sampled and graded in training; "
            f"nothing here is trained)\n" + tokenizer.decode(ids, skip_special_tokens=False)
            + "\n--- the item the grader reads besides the messages ({{item.<key>}}) ---\n"
            + json.dumps(keys, ensure_ascii=False))


def _show_text(tokenizer, item: Text, on: str, off: str, legend: str) -> str:
    """Raw text as training reads it: the tokenizer's own special tokens around it and an EOS
    after it, every token trained."""
    enc = tokenizer.backend_tokenizer.encode(item.text, add_special_tokens=True)
    ids = enc.ids + ([] if enc.ids and enc.ids[-1] == tokenizer.eos_token_id else [tokenizer.eos_token_id])
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return (f"line {item.line}: raw text, {len(ids)} tokens, every one trained ({legend}; training packs the "
            f"documents end to end into rows of --max-length)\n" + on + text + off)
