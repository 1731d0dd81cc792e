"""The GRPO benchmark's task, shared by both tools: short additions as OpenAI RFT prompts
(examples/make_arith_data.py), and one reward written twice, as the same arithmetic: tailor
scores with the example's grader (examples/arith-grader.json: a multi of a python grader and a
string_check, through tailor.graders); TRL, which takes Python reward functions, with `reward`.

    0.5 x (the reply's last number is the sum) + 0.5 x (the reply is exactly the sum)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GRADER = EXAMPLES / "arith-grader.json"


def write(train: str, val: str) -> None:
    sys.path.insert(0, str(EXAMPLES))
    from make_arith_data import pairs, write as write_file

    seen: set = set()
    write_file(Path(train), pairs(0, 112, seen))
    write_file(Path(val), pairs(1, 32, seen))


def reward(text: str, answer: str) -> float:
    numbers = re.findall(r"-?\d+", text)
    return 0.5 * float(bool(numbers) and numbers[-1] == answer) + 0.5 * float(text == answer)


def prompts(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
