"""The benchmark's dataset: chats a model can learn, deterministic (fixed seeds, no download).

A made-up shop, Lantern & Loom, with a fixed catalogue (product -> code, price, colour, country,
material) that every split shares. Its assistant, Pip, has a voice (an opener and a sign-off) and
answers in recurring formats: "Answer: X" facts, JSON records, lists, comparisons, order totals,
and summaries of order logs. So a model in training can learn the voice, the formats and the
facts, and the held-out loss measures that, not noise.

Held-out questions are new: every question has a key (its kind and the products and fields it
asks about); a fixed hash puts a key in the held-out split or the training split, never both, so
the validation file asks new questions about the same facts in the same formats.

Two shapes:
  short  one question and answer, a third of them two (~150 tokens with the system prompt);
  long   ~1,000 tokens: a multi-turn chat of 8-10 questions, or a pasted order log (~40 lines)
         that Pip summarises.

    python bench/dataset.py OUT.jsonl [--n 320] [--shape short|long] [--split train|val] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

SYSTEM = "You are Pip, the shop assistant of Lantern & Loom. Answer warmly, briefly and exactly."
SIGN_OFF = "Anything else from Lantern & Loom?"
OPENERS = {"fact": "Happy to help!", "record": "Here is the record.", "list": "Of course!",
           "compare": "Good question!", "total": "Let me add that up.", "summary": "Here is your summary."}

_FIRST = ["Brindle", "Oskar", "Marlow", "Tansy", "Quill", "Juniper", "Corvid", "Halden", "Sorrel", "Wren",
          "Ember", "Larkin", "Moss", "Pallas", "Rook", "Saffron", "Thistle", "Umber", "Vesper", "Yarrow"]
_KIND = ["Kettle", "Lamp", "Teapot", "Blanket", "Clock", "Vase", "Satchel", "Mug", "Candle", "Scarf"]
COLOURS = ["teal", "copper", "ivory", "plum", "saffron", "slate", "moss green", "coral"]
COUNTRIES = ["Portugal", "Norway", "Japan", "Chile", "Kenya", "Estonia"]
MATERIALS = ["steel", "oak", "wool", "glass", "linen", "clay", "brass"]
FIELDS = ["price", "colour", "country", "material", "code"]
# What customers say before a question: varied text around the learnable part, as in real chats.
PREFACES = ["", "Hi Pip! ", "Hello there. ", "Good morning! I'm buying a present for my sister's new flat. ",
            "Quick question before I order. ", "I saw your shop at the market last weekend and loved it. ",
            "Hey, I'm putting together a wish list for the holidays and need some details. ",
            "My friend recommended Lantern & Loom to me. ", "Sorry to bother you again. "]


def catalogue() -> list[dict]:
    """40 products, the same for every split and seed (the facts the model can learn)."""
    rng = random.Random(2026)
    names = [f"{a} {b}" for a in _FIRST for b in _KIND]
    rng.shuffle(names)
    out = []
    for i, name in enumerate(sorted(names[:40])):
        out.append({"name": name, "code": f"{name[0]}{name.split()[1][0]}-{1000 + 37 * i}",
                    "price": rng.choice([9, 12, 15, 18, 24, 29, 34, 42, 48, 55, 64, 79]),
                    "colour": rng.choice(COLOURS), "country": rng.choice(COUNTRIES),
                    "material": rng.choice(MATERIALS)})
    return out


PRODUCTS = catalogue()


def held_out(key: str) -> bool:
    """One question in eight, by a fixed hash of its key: the same in every run and split."""
    return hashlib.sha256(key.encode()).digest()[0] % 8 == 0


def _fact_value(p: dict, field: str) -> str:
    return f"${p['price']}" if field == "price" else str(p[field])


def fact(rng, p):
    field = rng.choice(FIELDS)
    q = {"price": f"How much is the {p['name']}?", "colour": f"What colour is the {p['name']}?",
         "country": f"Where is the {p['name']} made?", "material": f"What is the {p['name']} made of?",
         "code": f"What is the stock code of the {p['name']}?"}[field]
    a = (f"Answer: {_fact_value(p, field)}. The {p['name']} ({p['code']}) is {p['colour']}, made of "
         f"{p['material']} in {p['country']}, and costs ${p['price']}.")
    return f"fact:{p['name']}:{field}", q, a


def record(rng, p):
    q = rng.choice(["Give me the catalogue record for the {} as JSON.", "JSON record for the {}, please.",
                    "Can I see the {} entry as JSON?"]).format(p["name"])
    a = json.dumps({k: p[k] for k in ("code", "name", "price", "colour", "country", "material")})
    return f"record:{p['name']}", q, a


def listing(rng, _p):
    field, value = rng.choice([("country", c) for c in COUNTRIES] + [("colour", c) for c in COLOURS])
    items = [p for p in PRODUCTS if p[field] == value]
    q = f"Which of your products are made in {value}?" if field == "country" else f"Which products come in {value}?"
    lines = "\n".join(f"- {p['name']} ({p['code']}), ${p['price']}" for p in items) or "- none"
    return f"list:{field}:{value}", q, f"{lines}\nAnswer: {len(items)} products."


def compare(rng, p):
    o = rng.choice([x for x in PRODUCTS if x is not p])
    cheap, dear = (p, o) if p["price"] <= o["price"] else (o, p)
    q = f"Which is cheaper, the {p['name']} or the {o['name']}?"
    a = f"Answer: the {cheap['name']} (${cheap['price']} vs ${dear['price']} for the {dear['name']})."
    return f"compare:{p['name']}:{o['name']}", q, a


def total(rng, p):
    o = rng.choice([x for x in PRODUCTS if x is not p])
    n, m = rng.randint(1, 4), rng.randint(1, 4)
    q = f"I'd like {n} x {p['name']} and {m} x {o['name']}. What is the total?"
    a = (f"{n} x {p['name']} at ${p['price']} = ${n * p['price']}\n{m} x {o['name']} at ${o['price']} = "
         f"${m * o['price']}\nAnswer: ${n * p['price'] + m * o['price']}.")
    return f"total:{p['name']}:{o['name']}:{n}:{m}", q, a


def summary(rng, _p):
    """A pasted order log of ~35 lines (the long shape's document) and Pip's structured summary."""
    lines, units, value, by_country = [], 0, 0, {}
    for _ in range(rng.randint(36, 46)):
        p, n = rng.choice(PRODUCTS), rng.randint(1, 5)
        city = rng.choice(["Oslo", "Lisbon", "Osaka", "Nairobi", "Tallinn", "Valparaiso", "Leeds", "Lyon"])
        lines.append(f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {p['code']} x{n} shipped to {city}")
        units, value = units + n, value + n * p["price"]
        by_country[p["country"]] = by_country.get(p["country"], 0) + n
    q = "Please summarise this order log: units by country of origin and the total value.\n\n" + "\n".join(lines)
    origin = "\n".join(f"- {c}: {k} units" for c, k in sorted(by_country.items()))
    a = f"Order lines: {len(lines)}\nUnits: {units}\nBy origin:\n{origin}\nAnswer: ${value} in total."
    return f"summary:{rng.random()}", q, a


KINDS = [fact, fact, record, listing, compare, total]


def exchange(rng, split: str, kinds=KINDS):
    """One (question, answer) whose key falls in `split`, with Pip's voice around the answer."""
    while True:
        make = rng.choice(kinds)
        key, q, a = make(rng, rng.choice(PRODUCTS))
        if make is summary or held_out(key) == (split == "val"):
            kind = make.__name__.replace("listing", "list")
            return rng.choice(PREFACES) + q, f"{OPENERS[kind]}\n{a}\n{SIGN_OFF}"


def example(rng, shape: str, split: str) -> dict:
    messages = [{"role": "system", "content": SYSTEM}]
    if shape == "long" and rng.random() < 0.5:
        q, a = exchange(rng, split, [summary])
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    else:
        for _ in range(rng.choice([1, 1, 2]) if shape == "short" else rng.randint(8, 11)):
            q, a = exchange(rng, split)
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


def write(path: str, n: int = 320, seed: int = 0, shape: str = "short", split: str = "train") -> None:
    rng = random.Random(f"{seed}:{shape}:{split}")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(example(rng, shape, split)) + "\n" for _ in range(n))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=["short", "long"], default="short")
    ap.add_argument("--split", choices=["train", "val"], default="train")
    a = ap.parse_args()
    write(a.out, a.n, a.seed, a.shape, a.split)
