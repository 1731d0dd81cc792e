"""Constrained decoding: a JSON schema, or a Lark grammar for a model's tool-call format, compiled
by llguidance once per (grammar, tokenizer) and copied per request; at each step a request's
matcher masks the logits to the tokens that keep its output valid, then advances by the token
sampled. The engine holds matchers only for requests that asked for one.

Why llguidance (1.9) and not xgrammar (0.2.9), measured here (2-core CPU, torch 2.13, SmolLM2's
49,152-token vocabulary):
- it installs alone (one wheel, no dependencies); xgrammar pulls in triton, a GPU compiler;
- it compiles lazily: a 20,000-value enum in 0.3 s, where xgrammar took 40 s; fuel limits bound
  the work of compiling and of each step, so a pathological schema fails instead of stalling;
- its `$ref` resolver never fetches a document (xgrammar warned about remote refs, then compiled);
- per step it takes ~60 us a row to mask and advance (xgrammar ~9 us): both far below a decode
  step (bench/structured_speed.py measures the whole cost).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
import torch

# Output is written as Python's json.dumps writes it: {"a": 1, "b": [2, 3]}. Free whitespace
# lets a model (a weak one above all) emit blanks until max_tokens, the failure OpenAI's JSON
# mode warns about; fixed separators keep every token on the way to a closing brace.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
COMPILE_SECONDS = 5.0  # longer than this to compile: refused (llguidance's fuel caps the work itself)
CACHE_SIZE = 64  # compiled grammars kept per process (a pristine matcher each, copied per request)


class GrammarError(ValueError):
    """A schema or grammar that cannot be enforced. `path` locates the problem inside the schema
    ("properties.age.allOf") when known; the message names the keyword and never a server path."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, eq=False)
class Vocab:
    """A tokenizer as llguidance sees it: `width` ids (the model's logits, maybe padded past the
    tokenizer), and the stop ids a finished grammar allows."""

    tokenizer: object  # llguidance.LLTokenizer
    width: int
    source: object  # the transformers tokenizer, held so its id is not reused while cached


_lock = threading.Lock()
_vocabs: OrderedDict[tuple, Vocab] = OrderedDict()
_grammars: OrderedDict[tuple, Grammar] = OrderedDict()
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tailor-grammar")
VOCABS_KEPT = 16  # tokenizers (served models) with a cached vocabulary


def vocab(tokenizer, stop_ids: list[int], width: int) -> Vocab:
    """The llguidance view of `tokenizer` (about a second to build for a 49k vocabulary: once)."""
    import llguidance.hf

    stops = tuple(sorted(set(stop_ids)))
    key = (id(tokenizer), stops, width)
    found = _cached(_vocabs, key)
    if found is None or found.source is not tokenizer:
        try:
            built = llguidance.hf.from_tokenizer(tokenizer, n_vocab=width, eos_token=list(stops))
        except Exception as exc:
            raise GrammarError(f"This model's tokenizer cannot drive constrained decoding: {exc}") from exc
        found = _keep(_vocabs, key, Vocab(built, width, tokenizer), VOCABS_KEPT)
    return found


def _cached(cache: OrderedDict, key):
    with _lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    return None


def _keep(cache: OrderedDict, key, value, size: int):
    with _lock:
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    return value


class Matcher:
    """One request's position in its grammar."""

    def __init__(self, inner):
        self.inner = inner

    def advance(self, token: int) -> None:
        if not self.inner.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} is not allowed here ({self.inner.get_error()})")

    @property
    def error(self) -> str | None:
        """Why the matcher stopped working (a limit hit, no token can follow), else None. A matcher
        in error allows only the stop tokens, so the engine must fail its request, not end it."""
        return self.inner.get_error().split("\n", 1)[0] if self.inner.is_error() else None


class Grammar:
    """A compiled grammar: a pristine matcher that each request copies (copies share its caches)."""

    def __init__(self, template, vocab_: Vocab):
        self.template, self.vocab = template, vocab_

    def matcher(self) -> Matcher:
        return Matcher(self.template.deep_copy())


def json_schema(schema: dict, vocab_: Vocab) -> Grammar:
    """The grammar of JSON texts that validate against `schema` (checked first by infer.schema)."""
    import llguidance

    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"The schema cannot be compiled: {exc}") from exc
    return _compiled(text, vocab_)


def lark(text: str, vocab_: Vocab) -> Grammar:
    """The grammar of a Lark text (llguidance's dialect: `%json {...}` inlines a schema)."""
    import llguidance

    return _compiled(llguidance.LLMatcher.grammar_from_lark(text), vocab_)


def _compiled(text: str, vocab_: Vocab) -> Grammar:
    key = (text, id(vocab_))
    found = _cached(_grammars, key)
    if found is not None and found.vocab is vocab_:
        return found
    job = _pool.submit(_build, text, vocab_)
    try:
        grammar = job.result(timeout=COMPILE_SECONDS)
    except FutureTimeout:
        raise GrammarError(f"The schema took longer than {COMPILE_SECONDS:g} s to compile; simplify it "
                           "(fewer enum values, less nesting).") from None
    return _keep(_grammars, key, grammar, CACHE_SIZE)


def _build(text: str, vocab_: Vocab) -> Grammar:
    import llguidance

    # llguidance's defaults, stated: per step at most ~15 ms of lexer work and ~2.5 ms of parser
    # items (its own figures), so no grammar holds the engine's loop for long; past them the
    # matcher errs and its request fails alone
    limits = llguidance.LLParserLimits(step_lexer_fuel=200_000, step_max_items=50_000, verbose_errors=False)
    matcher = Matcher(llguidance.LLMatcher(vocab_.tokenizer, text, log_level=0, limits=limits))
    if matcher.error:
        raise GrammarError(f"The schema cannot be enforced: {matcher.error}")
    # the first mask builds the lexer's tables now, on this worker, not in the engine's loop
    fill_masks([matcher], vocab_.width)
    if matcher.error:
        raise GrammarError(f"The schema admits no value (e.g. a $ref that refers only to itself), or it is too "
                           f"complex to start ({matcher.error}).")
    return Grammar(matcher.inner, vocab_)


def fill_masks(matchers: list[Matcher], width: int) -> torch.Tensor:
    """[len(matchers), ceil(width / 32)] int32 bitmasks of the tokens each matcher allows now.
    One matcher after another on this thread: a mask takes tens of microseconds, and
    llguidance's thread pool (LLExecutor) kept the CPU busy after its work, slowing the model's
    own next step on a 2-core machine."""
    masks = torch.zeros((len(matchers), (width + 31) // 32), dtype=torch.int32)
    row_bytes = masks.shape[1] * 4
    for i, m in enumerate(matchers):
        m.inner.unsafe_compute_mask_ptr(masks.data_ptr() + i * row_bytes, row_bytes)
    return masks


def banned(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Bitmasks -> [rows, width] booleans, True where a token is NOT allowed (what masked_fill_
    takes): one pass over the bits (numpy's unpackbits; a torch shift-and-compare took four)."""
    bits = np.unpackbits((~masks).numpy().view(np.uint8), axis=1, bitorder="little")  # little-endian words
    return torch.from_numpy(bits[:, :width]).view(torch.bool)
