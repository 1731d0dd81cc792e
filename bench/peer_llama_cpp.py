"""llama.cpp (llama-cpp-python, the `gguf` extra) at batch 1, the local-inference peer: the same
work as peer_hf_generate.py and run_tailor_generate.py (greedy, 64 new tokens after the same
50-token prompt) on the same model, exported by `tailor export` at --quant (f16 or q8_0).
Prints one JSON line."""

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--quant", default="f16", choices=["f16", "q8_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    import llama_cpp

    from tailor.export.gguf import export_gguf

    gguf = Path(__file__).resolve().parent / ".work" / f"llama-cpp-{a.quant}.gguf"
    if not gguf.is_file():  # bench/run.py removes these at its start, so each run exports afresh
        export_gguf(a.model, gguf, quant=a.quant)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=a.threads, n_threads_batch=a.threads,
                          verbose=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (a.prompt_tokens,), generator=g).tolist()  # the peers' prompt

    def once() -> tuple[int, float]:
        llm.reset()
        t = time.perf_counter()
        n = 0
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):  # prefill + greedy decode, in C
            n += 1
            if n == a.new_tokens:
                break
        return n, time.perf_counter() - t

    once()  # warm-up
    best_n, best = min((once() for _ in range(a.reps)), key=lambda r: r[1])
    print(json.dumps({"tool": "llama_cpp", "quant": a.quant, "threads": a.threads, "new_tokens": best_n,
                      "seconds": best, "tokens_per_s": best_n / best}))


if __name__ == "__main__":
    main()
