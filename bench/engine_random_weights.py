"""Engine vs HF generate where the real weights cannot travel (a GPU box): SmolLM2-135M's exact
config and tokenizer with random weights; speed does not depend on the weights' values.

    python bench/engine_random_weights.py bench/smol_config [--dtype bfloat16]
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "src"))


def main() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = Path(sys.argv[1])
    dtype = sys.argv[2] if len(sys.argv) > 2 else "bfloat16"
    folder = Path(tempfile.mkdtemp()) / "smol"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src)), dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(folder)
    import infer_speed

    check_equal(str(folder))

    infer_speed.batch1(str(folder), dtype, reps=3)
    engine_concurrency(str(folder), dtype)


def check_equal(ref: str) -> None:
    """fp32: the engine's greedy tokens against HF generate's, in a batch of 3."""
    from tailor.infer.engine import Request
    from tailor.infer.loading import load_engine, load_hf_model
    from tailor.infer.sampling import SamplingParams

    engine = load_engine(ref, dtype="float32", max_batch=4).engine
    hf = load_hf_model(Path(ref), "float32")
    prompts = [list(range(100 + 7 * i, 140 + 9 * i)) for i in range(3)]
    reqs = [engine.submit(Request(p, SamplingParams(max_new_tokens=300, temperature=0))) for p in prompts]
    while engine.step():
        pass
    same = []
    for p, r in zip(prompts, reqs):
        ids = torch.tensor([p], device=hf.device)
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=300, do_sample=False, attention_mask=torch.ones_like(ids),
                              pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
        same.append(sum(a == b for a, b in zip(out, r.tokens)) if out != r.tokens else "all")
    print(json.dumps({"what": "fp32_greedy_equal_hf", "matches": same}), flush=True)


def engine_concurrency(ref: str, dtype: str) -> None:
    from tailor.infer.engine import Request
    from tailor.infer.loading import load_engine
    from tailor.infer.sampling import SamplingParams

    engine = load_engine(ref, dtype=dtype, max_batch=16).engine
    for n in (1, 1, 8, 16):
        reqs = [engine.submit(Request(list(range(100 + i, 150 + i)),
                                      SamplingParams(max_new_tokens=64, temperature=0.8, seed=i)))
                for i in range(n)]
        t = time.perf_counter()
        while engine.step():
            pass
        secs = time.perf_counter() - t
        made = sum(len(r.tokens) for r in reqs)
        print(json.dumps({"what": "engine_concurrent", "requests": n, "tokens": made,
                          "tok_s": round(made / secs, 1)}), flush=True)


if __name__ == "__main__":
    main()
