"""OpenAI's grader templates: `{{ item.answer }}`, `{{sample.output_text}}`,
`{{ sample.output_json.steps[0].name }}`. The only namespaces are `item` (the dataset row) and
`sample` (the model's output); nesting is JSON-path-like (`.key`, `[index]`, `["key"]`).

A string value is inserted as it is; any other value as JSON. A variable that does not resolve
is an error (OpenAI's `invalid_variable_error`), never an empty string that would grade as if
the model had answered nothing."""

from __future__ import annotations

import json
import re

NAMESPACES = ("item", "sample")
_VAR = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_STEP = re.compile(r"""\.([A-Za-z_][\w-]*)|\[\s*(-?\d+)\s*\]|\[\s*"([^"]*)"\s*\]|\[\s*'([^']*)'\s*\]""")


class TemplateError(ValueError):
    """A variable that is malformed or names nothing in the item or the sample."""


def variables(text: str) -> list[str]:
    """Every `{{ ... }}` expression in `text`, stripped."""
    return _VAR.findall(text)


def parse(expr: str) -> tuple[str, list]:
    """`sample.output_json.steps[0]` -> ("sample", ["output_json", "steps", 0])."""
    head = re.match(r"[A-Za-z_]\w*", expr)
    if head is None or head.group(0) not in NAMESPACES:
        raise TemplateError(f"{{{{ {expr} }}}}: a variable starts with item. or sample. "
                            "(e.g. {{ item.answer }} or {{ sample.output_text }})")
    steps, pos = [], head.end()
    while pos < len(expr):
        m = _STEP.match(expr, pos)
        if m is None:
            raise TemplateError(f"{{{{ {expr} }}}}: cannot read the path at '{expr[pos:]}'; "
                                "use .key, [0] or [\"key\"]")
        key, index, dq, sq = m.groups()
        steps.append(int(index) if index is not None else key if key is not None else dq if dq is not None else sq)
        pos = m.end()
    return head.group(0), steps


def check(text: str) -> None:
    """Raise TemplateError for the first malformed variable in `text` (checked when a grader is validated)."""
    if text.count("{{") != len(variables(text)):
        raise TemplateError(f"unbalanced '{{{{' in {text[:80]!r}: close each variable with '}}}}'")
    for expr in variables(text):
        parse(expr)


def lookup(expr: str, scope: dict):
    """The value `expr` names in {"item": ..., "sample": ...}."""
    namespace, steps = parse(expr)
    value = scope.get(namespace)
    if value is None:
        raise TemplateError(f"{{{{ {expr} }}}}: there is no {namespace} here")
    for i, step in enumerate(steps):
        where = namespace + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps[:i + 1])
        try:
            if isinstance(step, int) and isinstance(value, list):
                value = value[step]
            elif isinstance(step, str) and isinstance(value, dict):
                value = value[step]
            else:
                raise TemplateError(f"{{{{ {expr} }}}}: {where} cannot be read from a {type(value).__name__}")
        except (KeyError, IndexError):
            raise TemplateError(f"{{{{ {expr} }}}}: {where} does not exist") from None
        if value is None and i < len(steps) - 1:
            raise TemplateError(f"{{{{ {expr} }}}}: {where} is null")
    return value


def render(text: str, scope: dict) -> str:
    """`text` with every variable replaced by its value (strings as they are, the rest as JSON)."""
    def one(m: re.Match) -> str:
        value = lookup(m.group(1), scope)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return _VAR.sub(one, text)


def sample_scope(output_text: str, item: dict | None, *, output_json=None, output_tools=None,
                 choices=None) -> dict:
    """The scope graders see: `sample.output_json` is the output parsed as JSON when it is JSON
    (as graders/run fills it), else null."""
    if output_json is None:
        try:
            output_json = json.loads(output_text)
        except (ValueError, TypeError):
            output_json = None
    sample = {"output_text": output_text, "output_json": output_json, "output_tools": output_tools or [],
              "choices": choices or [{"index": 0, "message": {"role": "assistant", "content": output_text},
                                      "finish_reason": "stop"}]}
    return {"item": item if item is not None else {}, "sample": sample}
