"""`make demo`: teach SmolLM2-135M-Instruct a persona with a LoRA fine-tune, then compare.

1. The base model answers five held-out questions: plainly, and with a system prompt asking it
   to be the pirate Captain Stitch (prompting).
2. A LoRA fine-tune on examples/pirate.jsonl (198 short conversations, written by
   examples/make_pirate_data.py) runs for about a minute or two on a 2-core CPU.
3. The fine-tuned model answers the same questions, with no system prompt (fine-tuning).

The same run from the command line:  tailor train examples/pirate-lora.yaml
"""

import os

# Threads that wait by sleeping, not spinning: on a busy 2-core machine spinning OpenMP threads
# made training up to 7x slower; must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_pirate_data import HELD_OUT  # noqa: E402

SYSTEM = ("You are Captain Stitch, a pirate. Always answer in pirate speech: start with 'Arr' or 'Ahoy', "
          "call the user 'matey', and end with an anchor emoji.")


def answers(model, tokenizer, system: str | None) -> list[str]:
    from tailor.train.generate import greedy_replies

    chats = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
             for prompt in HELD_OUT]
    # One call per column: the engine's forward is built once for all the prompts.
    return [" ".join(text.split()) for text in greedy_replies(model, tokenizer, chats, max_new_tokens=48)]


def show(columns: dict[str, list[str]]) -> None:
    width = 100
    for i, prompt in enumerate(HELD_OUT):
        print("\n" + "=" * width + f"\n>>> {prompt}")
        for name, texts in columns.items():
            body = textwrap.fill(texts[i], width=width - 4, initial_indent="    ", subsequent_indent="    ")
            print(f"  [{name}]\n{body}")


def main() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    from tailor import models

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not ours
    from tailor.train import TrainConfig, train

    out = Path(os.environ.get("TAILOR_DEMO_OUT", "runs/pirate-demo"))
    print("Loading the base model (SmolLM2-135M-Instruct) and answering held-out prompts ...", flush=True)
    base, tok = models.load(None)
    before = answers(base, tok, None)
    prompted = answers(base, tok, SYSTEM)
    del base

    print(f"\nFine-tuning with LoRA on {HERE / 'pirate.jsonl'} -> {out}\n", flush=True)
    t0 = time.perf_counter()
    result = train(TrainConfig(data=str(HERE / "pirate.jsonl"), method="lora", out=str(out), epochs=3,
                               batch_size=8, lr=1e-3, eval_every=25, eval_samples=2, sample_max_tokens=32))
    minutes = (time.perf_counter() - t0) / 60

    tuned, tuned_tok = models.load(str(result.final))
    after = answers(tuned, tuned_tok, None)
    show({"base model": before, "base model + system prompt asking for the pirate": prompted,
          "LoRA fine-tuned, no system prompt": after})
    print("\n" + "=" * 100)
    print(f"Training: {result.step} steps in {minutes:.1f} min, {result.tokens_per_s:.0f} tokens/s, "
          f"peak memory {result.peak_rss_mb / 1024:.1f} GB, final validation loss {result.val.get('val_loss', float('nan')):.3f}")
    print(f"Outputs: {result.final} (adapter + tokenizer + model card), {out / 'loss.png'}, {out / 'metrics.jsonl'}")
    print(f"Chat with it:  .venv/bin/tailor chat --model {result.final}")
    print(f"Run it in llama.cpp / Ollama:  .venv/bin/tailor export {out} --gguf {out / 'pirate.gguf'} "
          f"--ollama {out / 'ollama'}")
    print(f"Share it on the Hugging Face Hub (needs HF_TOKEN or `hf auth login`):  "
          f".venv/bin/tailor push {out} YOUR_NAME/pirate-smollm2")


if __name__ == "__main__":
    main()
