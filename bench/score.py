"""The base model's held-out loss: the line the trained models must fall clearly below. Scored by
the same function as both tools' trained models (common.heldout_loss, fp32). One JSON line."""

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--val", required=True)
    a = ap.parse_args()
    import torch
    from common import heldout_loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    print(json.dumps({"val": a.val, "val_loss": heldout_loss(model, AutoTokenizer.from_pretrained(a.model), a.val)}))


if __name__ == "__main__":
    main()
