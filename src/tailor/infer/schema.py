"""What a JSON schema may hold before it is compiled for constrained decoding. Every schema: size
limits (a pathological one is refused here, before any compiling) and local `$ref`s only (nothing
in a schema may name a file or a URL). With `strict`, also OpenAI's Structured Outputs subset:
an object root, every object closed (`additionalProperties: false`) with all its properties
required, and only the keywords OpenAI documents as supported. Each problem names its keyword
and where it sits.

The limits are OpenAI's documented ones (Structured Outputs, "Supported schemas"), except the
nesting depth: OpenAI's pages have said 5 and 10; tailor takes 10.
"""

from __future__ import annotations

import re

from tailor.infer.grammar import GrammarError

MAX_DEPTH = 10  # levels of nested values (object properties, array items)
MAX_PROPERTIES = 5000  # object properties, summed over the schema
MAX_ENUM_VALUES = 1000  # enum values, summed over the schema
MAX_STRING_CHARS = 120_000  # property and definition names, enum and const values, summed
BIG_ENUM, BIG_ENUM_CHARS = 250, 15_000  # an enum of more than 250 strings: at most 15,000 characters
MAX_SUBSCHEMAS = 20_000

TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
                "$schema"}
_ANY_TYPE = {"type", "enum", "const", "anyOf", "$ref", "$defs", "definitions"}
# OpenAI's "Supported properties"; minLength/maxLength are listed as unsupported only for
# fine-tuned models, and the decoder enforces them, so they pass.
_BY_TYPE = {"object": {"properties", "required", "additionalProperties"},
            "array": {"items", "minItems", "maxItems"},
            "string": {"pattern", "format", "minLength", "maxLength"},
            "number": {"multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"}}
_BY_TYPE["integer"] = _BY_TYPE["number"]
# keywords whose value is a schema, a list of schemas, or a name -> schema map
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
        "unevaluatedItems", "unevaluatedProperties", "additionalItems")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_NAMED = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_REFS = ("$ref", "$dynamicRef", "$recursiveRef")
# how deep a named subschema's value sits: a property one level down, a definition where it is used
_NESTING = {"properties": lambda d: d + 1, "patternProperties": lambda d: d + 1, "$defs": lambda d: 1,
            "definitions": lambda d: 1}


def check(schema, *, strict: bool) -> None:
    """Raise GrammarError for the first problem; return when the schema may be compiled."""
    if not isinstance(schema, dict):
        raise GrammarError("The schema must be a JSON object.")
    if strict:
        if schema.get("type") != "object" or "anyOf" in schema:
            raise GrammarError('With strict: true the root must be {"type": "object", ...} (not anyOf), '
                               "as in OpenAI's Structured Outputs. Wrap the value in an object property.")
    _Walk(strict).node(schema, "", 0)


class _Walk:
    def __init__(self, strict: bool):
        self.strict = strict
        self.properties = self.enum_values = self.chars = self.nodes = 0

    def node(self, s, path: str, depth: int) -> None:
        if isinstance(s, bool):  # true / false are schemas too
            return
        if not isinstance(s, dict):
            raise GrammarError(f"Expected a schema (an object) at {_where(path)}.", path)
        self.nodes += 1
        if self.nodes > MAX_SUBSCHEMAS:
            raise GrammarError(f"The schema has more than {MAX_SUBSCHEMAS} subschemas.", path)
        if depth > MAX_DEPTH:
            raise GrammarError(f"The schema nests values more than {MAX_DEPTH} levels deep (at {_where(path)}).", path)
        for key in _REFS:
            if key in s and not (isinstance(s[key], str) and s[key].startswith("#")):
                raise GrammarError(f"`{key}` at {_where(path)} must point inside the schema (\"#/$defs/...\"); "
                                   "references to other documents are not followed.", _join(path, key))
        self.sizes(s, path)
        if self.strict:
            self.strict_rules(s, path)
        for key in _ONE:
            if key in s:
                self.node(s[key], _join(path, key), depth + (key in ("items", "additionalProperties")))
        for key in _MANY:
            if isinstance(s.get(key), list):
                for i, sub in enumerate(s[key]):
                    self.node(sub, _join(path, f"{key}[{i}]"), depth + (key == "prefixItems"))
        for key in _NAMED:
            if isinstance(s.get(key), dict):
                for name, sub in s[key].items():
                    self.node(sub, _join(path, f"{key}.{name}"), _NESTING.get(key, lambda d: d)(depth))

    def sizes(self, s: dict, path: str) -> None:
        for key in ("properties", "$defs", "definitions"):
            if isinstance(s.get(key), dict):
                self.chars += sum(len(str(k)) for k in s[key])
        if isinstance(s.get("properties"), dict):
            self.properties += len(s["properties"])
        if isinstance(s.get("enum"), list):
            values = s["enum"]
            self.enum_values += len(values)
            text = sum(len(v) for v in values if isinstance(v, str))
            self.chars += text
            if len(values) > BIG_ENUM and text > BIG_ENUM_CHARS:
                raise GrammarError(f"The enum at {_where(path)} has {len(values)} values of {text} characters; "
                                   f"past {BIG_ENUM} values they may hold at most {BIG_ENUM_CHARS}.",
                                   _join(path, "enum"))
        if isinstance(s.get("const"), str):
            self.chars += len(s["const"])
        for count, limit, what in ((self.properties, MAX_PROPERTIES, "object properties"),
                                   (self.enum_values, MAX_ENUM_VALUES, "enum values"),
                                   (self.chars, MAX_STRING_CHARS, "characters of names, enum and const values")):
            if count > limit:
                raise GrammarError(f"The schema has more than {limit} {what} (the limit is reached at "
                                   f"{_where(path)}).", path)

    def strict_rules(self, s: dict, path: str) -> None:
        types = s.get("type")
        types = [types] if isinstance(types, str) else types if isinstance(types, list) else []
        for t in types:
            if t not in TYPES:
                raise GrammarError(f"`type` {t!r} at {_where(path)} is not a JSON Schema type.", _join(path, "type"))
        allowed = _ANNOTATIONS | _ANY_TYPE
        for t in types:
            allowed |= _BY_TYPE.get(t, set())
        for key in s:
            if key not in allowed:
                raise GrammarError(f"`{key}` at {_where(path)} is not supported with strict: true (OpenAI's "
                                   "Structured Outputs subset). Remove it, or send strict: false to have it "
                                   "enforced where the decoder supports it.", _join(path, key))
        if "format" in s and s["format"] not in FORMATS:
            raise GrammarError(f"`format` {s['format']!r} at {_where(path)} is not supported with strict: true; "
                               f"the formats are {', '.join(sorted(FORMATS))}.", _join(path, "format"))
        if "object" in types or "properties" in s:
            if s.get("additionalProperties") is not False:
                raise GrammarError(f"With strict: true every object sets additionalProperties: false "
                                   f"(missing at {_where(path)}).", _join(path, "additionalProperties"))
            props = s.get("properties") or {}
            missing = [k for k in props if k not in (s.get("required") or [])]
            if missing:
                raise GrammarError(f"With strict: true every property is required; {', '.join(missing)} at "
                                   f"{_where(path)} are not (a union with null makes one optional).",
                                   _join(path, "required"))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return path or "the root"


_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ANY_OBJECT = {"type": "object"}


def response_schema(fmt) -> tuple[dict, bool] | None:
    """(schema, strict) from OpenAI's response_format, None for text; GrammarError naming the
    field (`path`) for a malformed one. The server's requests and GRPO's rollouts read it here."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise GrammarError('response_format.type must be "text", "json_object" or "json_schema".',
                           "response_format.type")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return ANY_OBJECT, False
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise GrammarError('response_format.json_schema must be an object: {"name": ..., "schema": {...}}.',
                           "response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise GrammarError("response_format.json_schema.name must be 1 to 64 letters, digits, _ or -.",
                           "response_format.json_schema.name")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise GrammarError("response_format.json_schema.strict must be true or false.",
                           "response_format.json_schema.strict")
    schema = spec.get("schema")
    if schema is None:  # OpenAI's schema is optional: then any JSON object
        return ANY_OBJECT, False
    return schema, bool(strict)


def compile_schema(schema, *, strict: bool, tokenizer, stop_ids: list[int], width: int):
    """Check `schema`, then its grammar for this tokenizer (cached): what the server's
    response_format and `tailor generate --json-schema` both use. Raises GrammarError."""
    from tailor.infer import grammar

    check(schema, strict=strict)
    return grammar.json_schema(schema, grammar.vocab(tokenizer, stop_ids, width))
