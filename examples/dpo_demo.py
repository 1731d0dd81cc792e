"""`make dpo-demo`: preference tuning (DPO) of SmolLM2-135M-Instruct toward short answers.

1. The base model answers five held-out questions (greedy, as the server would).
2. DPO with LoRA on examples/concise-dpo.jsonl (pairs written by examples/make_concise_data.py:
   each question answered in one sentence (chosen), and in the same sentence running on (rejected)),
   evaluated on examples/concise-dpo-val.jsonl, whose facts are not in the training file.
3. The tuned model answers the same questions; the held-out pairs' preference accuracy and
   reward margin are read from the run's eval.jsonl.

The same run from the command line:  tailor train examples/concise-dpo.yaml
"""

import os

# Threads that wait by sleeping, not spinning (see examples/demo.py); before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_concise_data import HELD_OUT  # noqa: E402


def answers(model, tokenizer) -> list[str]:
    from tailor.train.generate import greedy_replies

    chats = [[{"role": "user", "content": q}] for q in HELD_OUT]
    return [" ".join(t.split()) for t in greedy_replies(model, tokenizer, chats, max_new_tokens=80)]


def main() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    from tailor import models
    from tailor.train import TrainConfig, train

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    keys = yaml.safe_load((HERE / "concise-dpo.yaml").read_text())
    keys.update(data=str(HERE / "concise-dpo.jsonl"), val=str(HERE / "concise-dpo-val.jsonl"),
                out=os.environ.get("TAILOR_DEMO_OUT", keys["out"]))
    print("Loading the base model (SmolLM2-135M-Instruct) and answering held-out questions ...", flush=True)
    base, tok = models.load(None)
    before = answers(base, tok)
    del base

    print(f"\nDPO with LoRA on {keys['data']} -> {keys['out']}\n", flush=True)
    t0 = time.perf_counter()
    result = train(TrainConfig(**keys))
    minutes = (time.perf_counter() - t0) / 60
    tuned, tuned_tok = models.load(str(result.final))
    after = answers(tuned, tuned_tok)

    for q, b, a in zip(HELD_OUT, before, after):
        print("\n" + "=" * 100 + f"\n>>> {q}")
        for name, text in (("base model", b), ("after DPO", a)):
            print(f"  [{name}, {len(text.split())} words]\n" + textwrap.fill(text, 96, initial_indent="    ",
                                                                          subsequent_indent="    "))
    evals = [json.loads(ln) for ln in (result.out / "eval.jsonl").read_text().splitlines()]
    words = [sum(len(t.split()) for t in col) / len(col) for col in (before, after)]
    print("\n" + "=" * 100)
    print(f"Mean answer length on the held-out questions: {words[0]:.1f} words before, {words[1]:.1f} after.")
    print("Held-out pairs (examples/concise-dpo-val.jsonl), per evaluation: " + "; ".join(
        f"step {e['step']}: preference accuracy {e['val_rewards_accuracy']:.2f}, reward margin "
        f"{e['val_rewards_margin']:.2f}" for e in evals))
    print(f"Training: {result.step} steps in {minutes:.1f} min (reference pass included), "
          f"{result.tokens_per_s:.0f} tokens/s, peak memory {result.peak_rss_mb / 1024:.1f} GB")
    print(f"Outputs: {result.final}, {result.out / 'loss.png'} (loss, margin and accuracy), "
          f"{result.out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
