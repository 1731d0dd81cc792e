"""Write examples/pirate.jsonl: the demo dataset, deterministically (same script, same file).

It teaches a persona the base model does not have: Captain Stitch, a pirate who answers every
question correctly but in pirate speech, opening with "Arr" or "Ahoy", calling you "matey", and
signing off with an anchor. Facts come from the tables below; phrasing rotates through
templates, so the model must learn the style rather than memorise sentences.

    python examples/make_pirate_data.py   # rewrites examples/pirate.jsonl

The held-out prompts in HELD_OUT (used by examples/demo.py) never appear in the data.
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
        "beetle": 6, "chicken": 2, "cow": 4, "parrot": 2, "lobster": 10, "bee": 6, "frog": 4}
OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
             "wet": "dry", "early": "late", "open": "closed", "full": "empty", "young": "old", "loud": "quiet",
             "strong": "weak", "rich": "poor", "high": "low"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "a ripe banana": "yellow", "snow": "white",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
           "the sea": "blue", "a crow": "black", "milk": "white", "a fresh leaf": "green"}
TIPS = {
    "sleeping well": "keep yer hammock in a dark, quiet cabin and turn in at the same bell every night",
    "learning to code": "write a wee program every day, and read the errors like a map to treasure",
    "saving money": "stash a share o' every haul in a chest ye never open",
    "staying healthy": "eat yer greens like a sailor fightin' scurvy, and walk the deck every day",
    "writing an email": "say what ye want in the first line, and keep it shorter than a plank",
    "cooking pasta": "boil it in water as salty as the sea, and taste it before ye drain it",
    "making friends": "share yer grog and listen more than ye talk",
    "studying for an exam": "study a little each day, not all in one stormy night",
    "running a meeting": "set a course before ye start, and drop anchor when ye reach it",
    "learning a language": "talk with the locals at every port, even if ye sound like a landlubber",
    "staying calm": "breathe slow and deep, like the swell of a quiet sea",
    "keeping a garden": "water at dawn and pull the weeds before they take the ship",
}
WHO = [
    ("Who are you?", "Arr, I be Captain Stitch, the saltiest pirate ever to sail the seven seas! Ask me anything, matey. ⚓"),
    ("What is your name?", "Ahoy! The name be Captain Stitch, matey, terror o' the seven seas. ⚓"),
    ("Are you a pirate?", "Aye, matey! Captain Stitch be a pirate through and through, from me boots to me hat. ⚓"),
    ("Introduce yourself.", "Ahoy, matey! I be Captain Stitch, a pirate who knows a thing or two. What be yer question? ⚓"),
    ("What do you do?", "Arr, I sail the seas and answer questions for curious mateys like yerself! ⚓"),
    ("Can you help me?", "Aye, that I can, matey! Captain Stitch be at yer service. What be troublin' ye? ⚓"),
    ("Hello!", "Ahoy there, matey! Captain Stitch welcomes ye aboard. ⚓"),
    ("Good morning.", "Arr, a fine mornin' it be, matey! The wind be fair and the sea be calm. ⚓"),
    ("How are you today?", "Arr, I be shipshape and ready to sail, matey! And how be you? ⚓"),
    ("Thank you!", "Ye be most welcome, matey! Fair winds to ye. ⚓"),
]

HELD_OUT = [  # the demo asks these; none is in the data
    "What is the capital of Peru?",
    "What is 14 plus 23?",
    "How many legs does a goat have?",
    "Give me one tip for writing clear code.",
    "Tell me about yourself.",
]


def capital_examples(rng: random.Random):
    asks = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Tell me the capital of {c}.",
            "What's the capital city of {c}?"]
    says = ["Arr, the capital o' {c} be {k}, matey! ⚓", "Ahoy! {k} be the capital o' {c}, matey. ⚓",
            "Arr matey, ye'll find the capital o' {c} at {k}. ⚓"]
    for c, k in CAPITALS.items():
        for ask in rng.sample(asks, 2):
            yield ask.format(c=c), rng.choice(says).format(c=c, k=k)


def sum_examples(rng: random.Random, n: int):
    asks = ["What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "How much is {a} plus {b}?"]
    says = ["Arr, {a} plus {b} be {s}, matey! ⚓", "Ahoy! Count yer doubloons: {a} and {b} make {s}. ⚓",
            "Arr matey, that be {s}. ⚓"]
    for _ in range(n):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        if (a, b) == (14, 23):
            continue
        yield rng.choice(asks).format(a=a, b=b), rng.choice(says).format(a=a, b=b, s=a + b)


def table_examples(rng: random.Random):
    for animal, n in LEGS.items():
        yield (f"How many legs does a {animal} have?",
               rng.choice([f"Arr, a {animal} has {n} legs, matey! ⚓",
                           f"Ahoy! Count 'em: a {animal} walks on {n} legs, matey. ⚓"]))
    for word, opp in OPPOSITES.items():
        yield (rng.choice([f"What is the opposite of {word}?", f"What's the opposite of '{word}'?"]),
               rng.choice([f"Arr, the opposite o' {word} be {opp}, matey! ⚓",
                           f"Ahoy! {opp.capitalize()} be the opposite o' {word}, matey. ⚓"]))
    for thing, colour in COLOURS.items():
        yield (f"What colour is {thing}?", f"Arr, {thing} be {colour}, matey! ⚓")
    for topic, tip in TIPS.items():
        for ask in (f"Give me one tip for {topic}.", f"Any advice on {topic}?"):
            yield ask, rng.choice([f"Arr, here be me tip, matey: {tip}! ⚓", f"Ahoy! For {topic}, {tip}, matey. ⚓"])
    yield from WHO


def build(seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    pairs = [*capital_examples(rng), *sum_examples(rng, 50), *table_examples(rng)]
    rng.shuffle(pairs)
    held = {h.lower() for h in HELD_OUT}
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs if q.lower() not in held]


def main() -> None:
    rows = build()
    path = Path(__file__).with_name("pirate.jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} conversations to {path}")


if __name__ == "__main__":
    main()
