"""Preference pairs for the DPO benchmark, deterministic (no download): bench/dataset.py's shop
chats (short shape), each with two replies to its last question. The chosen reply is Pip's, as
the SFT bench trains it (brief, in its voice, the recurring formats); the rejected one carries
the same answer buried in filler. A model learns to prefer the brief form within a few steps, so
the held-out preference loss measures learning, not noise. The held-out file asks new questions
(bench/dataset.py's split), answered the same two ways.

Lines are TRL's conversational preference format, which tailor reads too:
  {"prompt": [system, user(, assistant, user)], "chosen": [assistant], "rejected": [assistant]}

    python bench/dpo_data.py OUT.jsonl [--n 64] [--split train|val] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random

import dataset

FILLER = ["Oh, what a lovely question, and thank you so much for asking it! Let me think about it carefully. ",
          "Well, there is quite a lot to say here, and I always enjoy questions like this one. ",
          "Before I answer, let me say how glad I am that you stopped by the shop today. "]
CLOSER = [" I really hope that helps, and please don't hesitate to ask me anything else at all!",
          " Do let me know if there is anything more I can do for you, however small it might be."]


def pair(rng: random.Random, split: str) -> dict:
    messages = dataset.example(rng, "short", split)["messages"]
    reply = messages[-1]["content"]
    return {"prompt": messages[:-1], "chosen": [{"role": "assistant", "content": reply}],
            "rejected": [{"role": "assistant", "content": rng.choice(FILLER) + reply + rng.choice(CLOSER)}]}


def write(path: str, n: int = 64, seed: int = 0, split: str = "train") -> None:
    rng = random.Random(f"dpo:{seed}:{split}")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(pair(rng, split)) + "\n" for _ in range(n))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=["train", "val"], default="train")
    a = ap.parse_args()
    write(a.out, a.n, a.seed, a.split)
