"""The base model's log-probs of the held-out pairs, once for both tools' DPO scores: one JSON line
(and the file given with --out)."""

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common import pair_logps

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    logps = pair_logps(model, AutoTokenizer.from_pretrained(a.model), a.val)
    with open(a.out, "w") as f:
        json.dump(logps, f)
    print(json.dumps({"pairs": len(logps), "out": a.out}))


if __name__ == "__main__":
    main()
