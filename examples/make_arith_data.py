"""Write examples/arith-rft.jsonl and arith-rft-val.jsonl: short additions as OpenAI RFT prompts.

Each line is a user question and the `answer` key the grader reads ({{item.answer}}):
    {"messages": [{"role": "user", "content": "What is 7 + 5? Reply with the number only."}], "answer": "12"}
The validation sums use other numbers than the training ones (no pair of addends is shared).

    python examples/make_arith_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
ASK = "What is {a} + {b}? Reply with the number only."


def pairs(seed: int, n: int, seen: set) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def write(path: Path, sums: list[tuple[int, int]]) -> None:
    with path.open("w") as f:
        for a, b in sums:
            f.write(json.dumps({"messages": [{"role": "user", "content": ASK.format(a=a, b=b)}],
                                "answer": str(a + b)}) + "\n")


def main() -> None:
    seen: set = set()
    write(HERE / "arith-rft.jsonl", pairs(0, 112, seen))
    write(HERE / "arith-rft-val.jsonl", pairs(1, 32, seen))


if __name__ == "__main__":
    main()
