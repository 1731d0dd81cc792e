"""A tiny made-up corpus for the retrieval tests: facts that appear nowhere else, and questions that
paraphrase them (few shared words), so retrieval has to match meaning, not copy words."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = {
    "zorblat.md": "# Zorblat engine\n\nThe Zorblat-9 engine burns violet kerosene and was first assembled in the "
                  "harbour town of Quellmouth in 2031.\n\n## Maintenance\n\nIts bearings must be greased every "
                  "seventeen days with seal fat.\n",
    "llamas.txt": "Mountain llamas of the Varn plateau hum a low note when they are content and spit only at "
                  "strangers wearing red.\n",
    "bakery.md": "# Pellow's Bakery\n\nPellow's Bakery opens at four in the morning and sells only rye loaves "
                 "shaped like owls. The founder, Ada Pellow, learned baking from her grandmother in Tromso.\n",
    "comet.txt": "Comet Ishvara-3 returns to the inner solar system every 412 years; its tail glows green "
                 "because of diatomic carbon.\n",
    "chess.md": "# Glass chess\n\nIn glass chess the queen may move only along diagonals, and a game ends after "
                "exactly sixty moves regardless of the position.\n",
    "river.txt": "The river Oska freezes solid each January, and villagers hold a skating race of eleven "
                 "kilometres between two lighthouses.\n",
    "robot.jsonl": json.dumps({"text": "The warehouse robot Tib charges its batteries by parking on copper "
                                       "plates set into the floor every night."}) + "\n",
    "tea.md": "# Cloudleaf tea\n\nCloudleaf tea is harvested only after the first snowfall, and it must be "
              "steeped in water no hotter than 70 degrees.\n",
}

# (question, answer as written in the document, document)
QA = [
    ("What fuel does the Zorblat motor use?", "violet kerosene", "zorblat.md"),
    ("How often do the Zorblat's bearings need lubricating?", "every seventeen days", "zorblat.md"),
    ("What noise do the plateau animals make when they are happy?", "hum a low note", "llamas.txt"),
    ("When does the owl-bread shop start its day?", "four in the morning", "bakery.md"),
    ("Who taught the bakery's founder her craft?", "her grandmother", "bakery.md"),
    ("How many years pass between visits of the green-tailed comet?", "412 years", "comet.txt"),
    ("Which way can the queen travel in the transparent board game?", "only along diagonals", "chess.md"),
    ("How long is the ice race held on the frozen river?", "eleven kilometres", "river.txt"),
    ("How does the storage-depot machine recharge?", "parking on copper plates", "robot.jsonl"),
    ("What is the hottest water allowed for brewing the snow-picked tea?", "70 degrees", "tea.md"),
]


def write_docs(folder: Path, docs: dict[str, str] = DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
