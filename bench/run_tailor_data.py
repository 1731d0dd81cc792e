"""tailor's side of the data benchmark: validate + render a JSONL file (no cache), examples/s."""

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from tailor.data import prepare

    tok = AutoTokenizer.from_pretrained(a.model)
    t = time.perf_counter()
    prepared = prepare(a.data, tok, max_length=512, truncate=True, use_cache=False)  # as TRL: cut, not drop
    seconds = time.perf_counter() - t
    n = len(prepared.examples)
    print(json.dumps({"tool": "tailor", "examples": n, "seconds": seconds, "examples_per_s": n / seconds,
                      "tokens": int(prepared.lengths.sum())}))


if __name__ == "__main__":
    main()
