"""tailor's engine at batch 1, the same work as peer_hf_generate.py: greedy, 64 new tokens after
a 50-token prompt, same model and dtype. Prints one JSON line."""

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
    from tailor.infer.loading import load_engine
    from tailor.infer.sampling import SamplingParams

    loaded = load_engine(a.model, dtype=a.dtype, max_batch=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (a.prompt_tokens,), generator=g).tolist()  # the peer's prompt
    params = SamplingParams(max_new_tokens=a.new_tokens, temperature=0, stop_token_ids=[])

    def once() -> tuple[int, float]:
        t = time.perf_counter()
        n = sum(1 for e in loaded.engine.generate(ids, params) if e.token is not None)
        return n, time.perf_counter() - t

    once()  # warm-up
    best_n, best = min((once() for _ in range(a.reps)), key=lambda r: r[1])
    print(json.dumps({"tool": "tailor", "dtype": a.dtype, "new_tokens": best_n, "seconds": best,
                      "tokens_per_s": best_n / best}))


if __name__ == "__main__":
    main()
