"""`string_check`: eq, ne, like (contains, case-sensitive), ilike (contains, any case).
Reward 1 or 0. The operations are OpenAI's (its guide's prose says `neq`; the schema says `ne`)."""

from __future__ import annotations

import time

from tailor.graders import checks, result, template

OPERATIONS = ("eq", "ne", "like", "ilike")


def check(g: dict, path: str) -> dict:
    return {"type": "string_check", "name": checks.string(g, "name", path, required=False, default="string_check"),
            "input": checks.string(g, "input", path, templated=True),
            "reference": checks.string(g, "reference", path, templated=True),
            "operation": checks.choice(g, "operation", path, OPERATIONS)}


def compare(operation: str, text: str, reference: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.casefold() in text.casefold()


def grade(g: dict, scope: dict, ctx) -> dict:
    started = time.monotonic()
    text, reference = render(g["input"], scope), render(g["reference"], scope)
    return result.response(g, float(compare(g["operation"], text, reference)), started=started)


def render(text: str, scope: dict) -> str:
    try:
        return template.render(text, scope)
    except template.TemplateError as exc:
        raise result.GradeFailure("invalid_variable_error", str(exc)) from None
