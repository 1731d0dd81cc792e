"""Same loss for both tools: tailor's renderer and TRL's template with {% generation %} markers
must give the same token ids and the same trained positions on the benchmark data. Exits 1 if not."""

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-length", type=int, default=512)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from common import marked_examples
    from tailor.data import prepare

    tok = AutoTokenizer.from_pretrained(a.model)
    ours = prepare(a.data, tok, max_length=a.max_length, use_cache=False).examples
    theirs = marked_examples(AutoTokenizer.from_pretrained(a.model), a.data)
    bad = 0
    for ex, (ids, mask) in zip(ours, theirs):
        same_ids = list(ex.input_ids) == ids
        same_mask = ((np.asarray(ex.labels) != -100) == np.asarray(mask, dtype=bool)).all() if same_ids else False
        bad += not (same_ids and same_mask)
    if bad or len(ours) != len(theirs):
        raise SystemExit(f"masks differ on {bad} of {len(theirs)} examples")
    print(json.dumps({"examples": len(theirs), "identical": True}))


if __name__ == "__main__":
    main()
