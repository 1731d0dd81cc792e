"""Write the DPO demo's preference data, deterministically (same script, same files):

    python examples/make_concise_data.py
    -> examples/concise-dpo.jsonl       training pairs (OpenAI's DPO format)
    -> examples/concise-dpo-val.jsonl   held-out pairs: facts that are not in the training file

Each pair answers one question twice, both times correctly: the chosen reply in one short
sentence; the rejected one the same sentence that then runs on, the way SmolLM2-135M-Instruct's
own answers often do ("The opposite of near is far. In the context of physics, ..."), sometimes
after a preamble. Where the two part, the chosen reply ends its turn and the rejected one goes
on: that is what a model tuned on these pairs learns, not new facts. The questions in HELD_OUT
(used by examples/dpo_demo.py; picked among held-out facts where the base model's answer runs
on) are in neither file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Brazil": "Brasília", "Argentina": "Buenos Aires", "Egypt": "Cairo", "Kenya": "Nairobi", "Russia": "Moscow",
    "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Finland": "Helsinki", "Poland": "Warsaw",
    "Austria": "Vienna", "Ireland": "Dublin", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Turkey": "Ankara", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Australia": "Canberra",
    "New Zealand": "Wellington", "Chile": "Santiago", "Cuba": "Havana", "Morocco": "Rabat",
    "Hungary": "Budapest", "Denmark": "Copenhagen", "South Korea": "Seoul", "Indonesia": "Jakarta",
}
LEGS = {"dog": 4, "cat": 4, "spider": 8, "ant": 6, "bird": 2, "horse": 4, "octopus": 8, "crab": 10,
        "beetle": 6, "chicken": 2, "cow": 4, "parrot": 2, "lobster": 10, "bee": 6, "frog": 4, "duck": 2}
OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
             "wet": "dry", "early": "late", "open": "closed", "full": "empty", "young": "old", "loud": "quiet",
             "strong": "weak", "rich": "poor", "high": "low", "hard": "soft"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "a ripe banana": "yellow", "snow": "white",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
           "the sea": "blue", "a crow": "black", "milk": "white", "a fresh leaf": "green"}
# Held out: the validation pairs and the demo's questions use these, never the training file.
VAL_CAPITALS = {"Peru": "Lima", "Colombia": "Bogotá", "Ukraine": "Kyiv", "Nigeria": "Abuja", "Iran": "Tehran",
                "Iceland": "Reykjavík", "Switzerland": "Bern", "Czechia": "Prague", "Romania": "Bucharest",
                "Philippines": "Manila"}
VAL_LEGS = {"goat": 4, "sheep": 4, "fly": 6, "scorpion": 8, "penguin": 2, "mouse": 4}
VAL_OPPOSITES = {"in": "out", "left": "right", "near": "far", "thick": "thin", "clean": "dirty"}
HELD_OUT = ["What is the opposite of near?", "What is 17 plus 26?", "How many legs does a scorpion have?",
            "What is the opposite of left?", "What is the capital of Iceland?"]

PREAMBLES = ["To answer this, we need to first think about what the question is really asking. ",
             "That's a great question, and many people wonder about it. ",
             "Let me explain this step by step, because there is more to it than it seems. "]
RUN_ONS = ["This is a classic example of a fact that is often misunderstood, even by experts.",
           "In the context of science and history, this has a long and fascinating background.",
           "It is a common misconception that the answer is different, but in reality it is well established.",
           "To understand this better, we need to consider the many factors that play a role here.",
           "This concept is fundamental, and it appears in many different areas of everyday life."]
CLOSER = "I hope this helps! Let me know if you have any other questions."


def facts(capitals, legs, opposites, colours, sums: list[tuple[int, int]]):
    """(question, short answer) for every fact, in a few phrasings each."""
    for country, city in capitals.items():
        yield f"What is the capital of {country}?", f"The capital of {country} is {city}."
        yield f"Which city is the capital of {country}?", f"{city}."
    for animal, n in legs.items():
        yield f"How many legs does a {animal} have?", f"A {animal} has {n} legs."
    for word, opp in opposites.items():
        yield f"What is the opposite of {word}?", f"The opposite of {word} is {opp}."
    for thing, colour in colours.items():
        yield f"What colour is {thing}?", f"{thing[0].upper()}{thing[1:]} is {colour}."
    for a, b in sums:
        yield f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def ramble(rng: random.Random, answer: str) -> str:
    """The answer, sometimes after a preamble, then a sentence or two that run on, sometimes a closer."""
    lead = rng.choice(PREAMBLES) if rng.random() < 0.3 else ""
    tail = rng.sample(RUN_ONS, rng.choice([1, 2])) + ([CLOSER] if rng.random() < 0.3 else [])
    return lead + answer + " " + " ".join(tail)


def pair(rng: random.Random, question: str, answer: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": ramble(rng, answer)}]}


def build(seed: int = 1) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    sums = [(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(60)]
    held = {q.lower() for q in HELD_OUT}
    train = [pair(rng, q, a) for q, a in facts(CAPITALS, LEGS, OPPOSITES, COLOURS, sums[:48]) if q.lower() not in held]
    val = [pair(rng, q, a) for q, a in facts(VAL_CAPITALS, VAL_LEGS, VAL_OPPOSITES, {}, sums[48:])
           if q.lower() not in held]
    rng.shuffle(train)
    return train, val


def main() -> None:
    here = Path(__file__).parent
    for name, rows in zip(("concise-dpo.jsonl", "concise-dpo-val.jsonl"), build()):
        (here / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} preference pairs to {here / name}")


if __name__ == "__main__":
    main()
