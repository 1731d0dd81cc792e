"""Typed configs that are also the command line and the YAML file.

A config is a plain dataclass; each field carries a docstring (a string literal right below
it), which becomes the flag's help text. `add_arguments` turns the fields into `--flags`,
`build` merges YAML, then flags, onto the defaults and rejects unknown keys with the list of
valid ones. The core only ever sees the dataclass.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from tailor.errors import TailorError, UsageError


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(name: str, tp: Any, value: Any) -> Any:
    """Coerce a YAML or flag value to the field's type, or raise a message naming the key."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise TailorError(f"{name}: a value is required.")
    try:
        if get_origin(tp) is Literal:
            choices = get_args(tp)
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(map(str, choices))}")
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("must be a whole number")
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if get_origin(tp) in (list, tuple):
            (inner,) = get_args(tp)[:1] or (str,)
            items = value.split(",") if isinstance(value, str) else list(value)
            return [_convert(name, inner, v.strip() if isinstance(v, str) else v) for v in items]
    except (TypeError, ValueError) as exc:
        raise TailorError(f"{name}: {value!r} is not valid ({exc}).") from exc
    return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one `--flag` per dataclass field. Defaults are suppressed so `build` can tell which
    flags the user actually gave (flags override YAML, YAML overrides defaults)."""
    docs = field_docs(cls)
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, _ = _unwrap_optional(types_[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = docs.get(f.name, "").replace("%", "%%")  # prose, not an argparse format string
        if default not in (None, "") and not isinstance(default, bool):
            help_ += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            if get_origin(tp) is Literal:
                kwargs["choices"] = get_args(tp)
            parser.add_argument(flag(f.name), metavar=f.name.upper(), **kwargs)


def build(cls: type, *sources: dict[str, Any] | None):
    """Make a `cls` from dicts applied in order (later wins). Unknown keys are one error that
    lists the valid ones; values are converted to the field types."""
    valid = {f.name for f in dataclasses.fields(cls)}
    types_ = _field_types(cls)
    merged: dict[str, Any] = {}
    unknown: list[str] = []
    for src in sources:
        for key, value in (src or {}).items():
            k = key.replace("-", "_")
            if k not in valid:
                unknown.append(key)
            else:
                merged[k] = value
    if unknown:
        raise UsageError(
            f"Unknown config key(s): {', '.join(sorted(set(unknown)))}. "
            f"Valid keys: {', '.join(sorted(valid))}."
        )
    problems = []
    values = {}
    for k, v in merged.items():
        try:
            values[k] = _convert(k, types_[k], v)
        except TailorError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("Invalid config:\n  " + "\n  ".join(problems))
    return cls(**values)


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UsageError(f"Cannot read config file {p}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"Config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"Config file {p} must be a mapping of key: value, not {type(data).__name__}.")
    return data


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
