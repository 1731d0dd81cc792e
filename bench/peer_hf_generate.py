"""HF `model.generate` at batch 1, the generation peer: 64 new tokens after a 50-token prompt,
greedy, same model and dtype as tailor's engine. Prints one JSON line."""

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (1, a.prompt_tokens), generator=g)
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
              attention_mask=torch.ones_like(ids), pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **kw)  # warm-up
        best = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            out = model.generate(ids, **kw)
            best = min(best, time.perf_counter() - t)
    new = out.shape[1] - ids.shape[1]
    print(json.dumps({"tool": "hf_generate", "dtype": a.dtype, "new_tokens": new, "seconds": best,
                      "tokens_per_s": new / best}))


if __name__ == "__main__":
    main()
