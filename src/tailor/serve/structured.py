"""What a chat request's reply must follow: a forced tool call (serve.tools), else its
`response_format`, compiled to a grammar the engine enforces token by token (infer.grammar).

response_format:
- {"type": "text"} or none: free text;
- {"type": "json_object"}: a JSON object;
- {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}: JSON valid against the
  schema; with strict: true, the schema must keep to OpenAI's Structured Outputs subset.
A bad schema is a 400 naming the keyword. Compiling happens on the request's worker thread
(chat's `_jobs` runs off the event loop) and is cached per (schema, tokenizer).
"""

from __future__ import annotations

from tailor.infer import grammar, schema as schemas
from tailor.infer.grammar import GrammarError
from tailor.infer.loading import embedding_rows
from tailor.serve import tools
from tailor.serve.errors import APIError

ANY_OBJECT = schemas.ANY_OBJECT


def reply_grammar(body, served) -> grammar.Grammar | None:
    """The grammar of this request's reply, or None for free text."""
    calls = tools.forced_calls(body, served)
    if calls is not None:
        # the calls' grammar is tailor's own; what can fail in it is a tool's parameters schema
        return _compile(lambda v: grammar.lark(calls, v), served, "tools")
    found = response_schema(body.response_format)
    if found is None:
        return None
    schema, strict = found
    param = "response_format.json_schema.schema" if schema is not ANY_OBJECT else "response_format"
    try:
        return schemas.compile_schema(schema, strict=strict, tokenizer=served.tokenizer,
                                      stop_ids=list(served.stop_ids), width=embedding_rows(served.engine.backend))
    except GrammarError as exc:
        raise APIError(400, f"{param}: {exc}", param=f"{param}.{exc.path}" if exc.path else param) from exc


def response_schema(fmt) -> tuple[dict, bool] | None:
    """(schema, strict) from a response_format, None for text; 400 naming the field for a malformed one."""
    try:
        return schemas.response_schema(fmt)
    except GrammarError as exc:
        raise APIError(400, str(exc), param=exc.path) from None


def _compile(build, served, param: str) -> grammar.Grammar:
    try:
        return build(grammar.vocab(served.tokenizer, list(served.stop_ids), embedding_rows(served.engine.backend)))
    except GrammarError as exc:
        raise APIError(400, f"{param}: {exc}", param=param) from exc
