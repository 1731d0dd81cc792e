"""Checking a grader's JSON: each problem is an `Invalid` naming the field's path
(`grader.graders.exact.reference`), the way a 400's `param` names it."""

from __future__ import annotations

from tailor.graders import template


class Invalid(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(f"{param}: {message}")
        self.message, self.param = f"{param}: {message}", param


def obj(value, path: str) -> dict:
    if not isinstance(value, dict):
        raise Invalid(f"expected an object, got {_kind(value)}", path)
    return value


def string(g: dict, key: str, path: str, *, required: bool = True, templated: bool = False,
           default: str | None = None) -> str | None:
    value = g.get(key)
    if value is None:
        if required:
            raise Invalid("missing required field", f"{path}.{key}")
        return default
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_kind(value)}", f"{path}.{key}")
    if templated:
        template_ok(value, f"{path}.{key}")
    return value


def number(g: dict, key: str, path: str, *, required: bool = False, lo: float | None = None,
           hi: float | None = None, integer: bool = False):
    value = g.get(key)
    if value is None:
        if required:
            raise Invalid("missing required field", f"{path}.{key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise Invalid(f"expected {'an integer' if integer else 'a number'}, got {_kind(value)}", f"{path}.{key}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise Invalid(f"{value} is out of range [{lo if lo is not None else '-inf'}, "
                      f"{hi if hi is not None else 'inf'}]", f"{path}.{key}")
    return int(value) if integer else value


def choice(g: dict, key: str, path: str, options: tuple[str, ...]) -> str:
    value = string(g, key, path)
    if value not in options:
        raise Invalid(f"{value!r} is not one of {', '.join(options)}", f"{path}.{key}")
    return value


def template_ok(text: str, path: str) -> None:
    try:
        template.check(text)
    except template.TemplateError as exc:
        raise Invalid(str(exc), path) from None


def _kind(value) -> str:
    return "null" if value is None else {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
                                         int: "a number", float: "a number"}.get(type(value), type(value).__name__)
