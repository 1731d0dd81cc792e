"""The benchmark's dataset: deterministic (fixed seed), realistic chat shapes.

Each example: a system prompt, a user prompt of ~20-200 tokens, an assistant answer of ~10-150
tokens (a quarter of them two exchanges long); about 40% of all tokens are assistant tokens.
Text is drawn from a fixed word list so no download is needed and every run sees the same data.

    python bench/dataset.py OUT.jsonl [--n 320] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were their one all we can her has there been if more when will would who so no
data model train learn token answer question system user help code write read file line error
fix test build run fast slow memory batch step loss rate value number list string table key map
function class method object module package import return print loop while break continue true
false none python torch tensor matrix vector layer weight bias gradient optimizer schedule warm
cosine linear constant epoch sample shuffle seed random deterministic check validate render chat
template assistant message role content prompt completion output input example format json line
because however therefore also often usually sometimes never always quickly carefully clearly
simple small large tiny huge early late first last next previous other same different new old
good better best bad worse worst right wrong easy hard open close start stop begin end finish
time day week month year morning evening night today tomorrow yesterday city country river
mountain ocean forest garden house street road bridge market school library museum station
people person friend teacher student doctor engineer artist writer player worker family child
""".split()

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise technical assistant. Answer briefly and precisely.",
    "You are a friendly tutor who explains things step by step.",
    "You are an expert software engineer. Prefer short code examples.",
]


def sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(1, n_words))]
    words[0] = words[0].capitalize()
    out, i = [], 0
    while i < len(words):  # sentences of 6-14 words, so the text has a realistic rhythm
        k = rng.randint(6, 14)
        chunk = words[i:i + k]
        if out:
            chunk[0] = chunk[0].capitalize()
        out.append(" ".join(chunk) + rng.choice([".", ".", ".", "?", "!"]))
        i += k
    return " ".join(out)


def example(rng: random.Random) -> dict:
    # ~0.75 words per token for this vocabulary on SmolLM2's tokenizer
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
    for _ in range(2 if rng.random() < 0.25 else 1):
        user_tokens = int(rng.triangular(20, 200, 40))
        answer_tokens = int(rng.triangular(10, 150, 100))
        messages.append({"role": "user", "content": sentence(rng, int(user_tokens * 0.75))})
        messages.append({"role": "assistant", "content": sentence(rng, int(answer_tokens * 0.75))})
    return {"messages": messages}


def write(path: str, n: int = 320, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(example(rng)) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write(a.out, a.n, a.seed)
