"""Retrieved chunks into a prompt: the one format used by training data (`tailor data rag`), chat,
the server and eval alike, so a model is trained on exactly the prompt it is served with.

    <instruction line>
    <document source="guide.md" heading="Intro > Setup">TEXT</document>
    <document source="notes.txt" heading="">TEXT</document>

Style 'system' (default) puts these blocks in a system message; 'user' prefixes them to the latest
user turn (for chat templates that drop or mangle system messages).
"""

from __future__ import annotations

STYLES = ("system", "user")

# Short on purpose: small models copy long instructions into their answers.
INSTRUCTION = "Answer using the documents below when they are relevant; some may not be."


def format_documents(hits) -> str:
    """The instruction line and one <document> block per hit, as they appear in the prompt."""
    blocks = [f'<document source="{_attr(h.source)}" heading="{_attr(h.heading)}">{h.text}</document>'
              for h in hits]
    return "\n".join([INSTRUCTION, *blocks])


def _attr(value: str) -> str:
    # Not HTML escaping: a model should read "Intro > Setup", not "Intro &gt; Setup". Only what
    # would end the attribute or the line changes.
    return " ".join(value.replace('"', "'").split())


def add_context(messages: list[dict], hits, style: str = "system") -> list[dict]:
    """A new message list with the retrieved chunks in it (the input is not modified).

    'system': a system message holding the documents, merged after the text of an existing first
    system message, else inserted first. 'user': the same text prefixed to the latest user turn.
    No hits: an unchanged copy."""
    if style not in STYLES:
        raise ValueError(f"context style must be one of {', '.join(STYLES)}, not {style!r}")
    out = [dict(m) for m in messages]
    if not hits:
        return out
    docs = format_documents(hits)
    if style == "system":
        if out and out[0].get("role") == "system":
            out[0]["content"] = _join(out[0].get("content"), docs, before=False)
        else:
            out.insert(0, {"role": "system", "content": docs})
        return out
    for message in reversed(out):
        if message.get("role") == "user":
            message["content"] = _join(message.get("content"), docs, before=True)
            return out
    # No user turn to attach to: a system message still carries the documents to the model.
    return add_context(messages, hits, "system")


def _join(content, docs: str, *, before: bool):
    """`content` with `docs` added, for string content and for OpenAI content-part lists alike."""
    if isinstance(content, list):
        part = {"type": "text", "text": docs}
        return [part, *content] if before else [*content, part]
    text = content or ""
    if not text:
        return docs
    return f"{docs}\n\n{text}" if before else f"{text}\n\n{docs}"


def sources(hits) -> list[dict]:
    """JSON-able list for API responses and eval output."""
    return [{"source": h.source, "heading": h.heading, "chunk_id": h.chunk_id,
             "score": round(float(h.score), 6), "text": h.text} for h in hits]
