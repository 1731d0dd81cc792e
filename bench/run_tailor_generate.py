"""tailor's engine at batch 1, the same work as peer_hf_generate.py: greedy, 64 new tokens after
a 50-token prompt, same model and dtype. Prints one JSON line.

Options after `--` are passed to the engine's loader as keyword arguments, named as `tailor
generate` names its flags (`-- --quantize int8` -> load_engine(..., quantize="int8")), so a new
engine option gets its own bench row without changing this script."""

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
    a, extra = ap.parse_known_args()
    from tailor.infer.loading import load_engine
    from tailor.infer.sampling import SamplingParams

    loaded = load_engine(a.model, dtype=a.dtype, max_batch=1, **engine_options(extra))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (a.prompt_tokens,), generator=g).tolist()  # the peer's prompt
    params = SamplingParams(max_new_tokens=a.new_tokens, temperature=0, stop_token_ids=[])

    def once() -> tuple[int, float]:
        t = time.perf_counter()
        n = sum(1 for e in loaded.engine.generate(ids, params) if e.token is not None)
        return n, time.perf_counter() - t

    once()  # warm-up
    best_n, best = min((once() for _ in range(a.reps)), key=lambda r: r[1])
    forward = loaded.engine.backend
    plan = getattr(getattr(forward, "plan", None), "name", None) or a.dtype  # what --dtype auto measured
    print(json.dumps({"tool": "tailor", "dtype": a.dtype, "plan": plan, "precision": getattr(forward, "precision", None),
                      "flags": " ".join(extra), "new_tokens": best_n, "seconds": best, "tokens_per_s": best_n / best}))


def engine_options(flags: list[str]) -> dict:
    """['--quantize', 'int8'] -> {'quantize': 'int8'}; a flag without a value is True."""
    out, i = {}, 0
    flags = [f for f in flags if f != "--"]
    while i < len(flags):
        if not flags[i].startswith("--"):
            raise SystemExit(f"run_tailor_generate: expected a --flag, got {flags[i]!r}")
        name = flags[i][2:].replace("-", "_")
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        out[name] = flags[i + 1] if has_value else True
        i += 2 if has_value else 1
    return out


if __name__ == "__main__":
    main()
