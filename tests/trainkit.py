"""Helpers for the training tests: tiny datasets, and hand-made examples for pure-function tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

WORDS = "the quick brown fox jumps over lazy dog capital of France is Paris hello help you today".split()


def write_chat_jsonl(path: Path, n: int, *, seed: int = 0, system: bool = False) -> Path:
    """n short conversations with varied lengths, deterministic."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))
            msgs = ([{"role": "system", "content": "Be brief."}] if system else [])
            msgs += [{"role": "user", "content": f"{i}: {q}?"}, {"role": "assistant", "content": f"Ahoy! {a}."}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


class Ex:
    def __init__(self, ids, labels, line=1):
        self.input_ids = np.asarray(ids, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.line = line


def random_examples(n: int, vocab: int, *, seed: int = 0, lo: int = 5, hi: int = 40) -> list[Ex]:
    """Token sequences whose second half is trained, like a prompt + answer."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(lo, hi))
        ids = rng.integers(3, vocab, size=length)
        labels = ids.copy()
        labels[: length // 2] = -100
        out.append(Ex(ids, labels, line=i + 1))
    return out



def write_preference_jsonl(path: Path, n: int, *, seed: int = 0, style: str = "openai") -> Path:
    """n learnable preference pairs, deterministic: the chosen reply greets like a pirate, the
    rejected one plainly, around the same random words (so a held-out pair is new words, same rule).
    style: openai (input/preferred_output/non_preferred_output) or trl (prompt/chosen/rejected strings)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
            prompt, chosen, rejected = f"{i}: {q}?", f"Ahoy matey, arr! {a}.", f"Hello! How can I help you? {a}."
            if style == "trl":
                line = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            else:
                line = {"input": {"messages": [{"role": "user", "content": prompt}]},
                        "preferred_output": [{"role": "assistant", "content": chosen}],
                        "non_preferred_output": [{"role": "assistant", "content": rejected}]}
            f.write(json.dumps(line) + "\n")
    return path


def write_prompt_jsonl(path: Path, n: int, *, seed: int = 0) -> Path:
    """n RFT prompt lines (OpenAI's reinforcement format), deterministic: a user question and the
    `answer` key a grader reads as {{item.answer}}."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
            line = {"messages": [{"role": "user", "content": f"{i}: {q}?"}], "answer": rng.choice(WORDS)}
            f.write(json.dumps(line) + "\n")
    return path
